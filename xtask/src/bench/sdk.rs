//! `cargo xtask bench --sdk` (and part of `cargo xtask bench`): ztrace against the alternative a
//! user would pick, OpenTelemetry's zero-code Python instrumentation.
//!
//! The example system as Flask apps under gunicorn (`examples/flask/`: orders → users,
//! inventory, PostgreSQL) runs three ways, alternating in [`ROUNDS`] rounds: untraced; each
//! service under `opentelemetry-instrument gunicorn ...` (the Flask, urllib and psycopg2
//! instrumentations, OTLP/HTTP export); and untouched services with ztrace
//! (`--no-ui --otlp-endpoint ... --exe gunicorn --exe postgres`, stacks on). Both export to the
//! same OTLP/HTTP endpoint, one that reads and discards (the e2e crate's `backend::Backend`), so the
//! receiver costs neither side. For each run: requests/s under `wrk -t2 -c16 -d10s` on
//! `GET /orders/1`, and the CPU time per request of every process involved (the gunicorn
//! masters and workers, PostgreSQL, and ztrace when it runs; not wrk, not the receiver).
//!
//! Then the trace each gives: a few requests with each exporting to the real OTLP receiver of the
//! tests (`tests/otlp_receiver.py`), and the spans per trace and the span names of one trace.

use std::cell::Cell;
use std::path::PathBuf;

use super::*;
use crate::demo;
use ztrace_e2e::backend::Backend;

/// The bench's own venv: the services, the SDK with its instrumentations, and what the OTLP
/// receiver of the tests imports (to read the traces back).
const VENV_PACKAGES: &[&str] = &[
    "flask",
    "gunicorn",
    "psycopg2-binary",
    "opentelemetry-distro",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-instrumentation-flask",
    "opentelemetry-instrumentation-urllib",
    "opentelemetry-instrumentation-psycopg2",
    "grpcio",
    "opentelemetry-proto",
    "protobuf",
];
const VENV_CHECK: &str = "import flask, gunicorn, psycopg2, grpc, opentelemetry.proto, \
    opentelemetry.instrumentation.flask, opentelemetry.instrumentation.urllib, \
    opentelemetry.instrumentation.psycopg2, opentelemetry.exporter.otlp.proto.http.trace_exporter";

/// Rounds of (untraced, SDK, ztrace).
const ROUNDS: usize = 3;
const LOAD_ARGS: &[&str] = &["-t2", "-c16", "-d10s"];
const SDK_LOAD_SECONDS: f64 = 10.0;
/// Requests sent to read back the trace each way gives.
const SHAPE_REQUESTS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Untraced,
    Sdk,
    Ztrace,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::Untraced => "untraced",
            Way::Sdk => "OpenTelemetry SDK",
            Way::Ztrace => "ztrace",
        }
    }
}

struct Row {
    way: Way,
    requests_per_sec: f64,
    /// CPU seconds of the services, PostgreSQL and (ztrace rows) the agent, per request.
    cpu_per_request: f64,
    /// The agent's share of `cpu_per_request` (ztrace rows).
    agent_cpu_per_request: Option<f64>,
}

pub(super) fn sdk_bench(ztrace: &Path) -> Result<()> {
    apt_install(demo::PACKAGES)?;
    apt_install(&["wrk"])?;
    let python = util::python_venv("bench-sdk-venv", VENV_PACKAGES, VENV_CHECK)?;
    let venv_bin = python.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = TempDir::new("bench-sdk");
    let pg_port = free_port();
    let postgres = demo::start_postgres(dir.path(), pg_port)?;
    demo::load_databases(&util::repo_root(), pg_port)?;
    let receiver = Backend::start();
    let system = System {
        venv_bin,
        pg_port,
        postgres_group: postgres.pid(),
    };
    say!("the example under gunicorn: untraced, with OpenTelemetry's zero-code instrumentation, with ztrace; OTLP/HTTP to {}", receiver.endpoint());
    let mut rows = Vec::new();
    for round in 1..=ROUNDS {
        for way in [Way::Untraced, Way::Sdk, Way::Ztrace] {
            say!("round {round}/{ROUNDS}: {}...", way.label());
            let row = system.run(way, ztrace, &receiver.endpoint(), dir.path())?;
            say!(
                "  {:.0} requests/s, {:.0} µs CPU per request",
                row.requests_per_sec,
                row.cpu_per_request * 1e6
            );
            rows.push(row);
        }
    }
    report(&rows);
    say!("the trace of one request, each way (to the tests' OTLP receiver)...");
    // SAFETY: xtask is single-threaded here (the receiver's threads do not read the environment).
    std::env::set_var("ZTRACE_PYTHON", &python);
    for way in [Way::Sdk, Way::Ztrace] {
        let shape = system.trace_shape(way, ztrace, dir.path())?;
        println!("{}: {shape}", way.label());
    }
    drop(postgres);
    Ok(())
}

/// What every run shares: the venv, PostgreSQL.
struct System {
    venv_bin: PathBuf,
    pg_port: u16,
    /// Process group of PostgreSQL (postmaster and backends).
    postgres_group: u32,
}

impl System {
    /// The three services, started `way`'s way (callees first); the URL of orders.
    fn start(&self, way: Way, otlp: &str) -> Result<(Vec<demo::Running>, String)> {
        let root = util::repo_root();
        let mut services = Vec::new();
        let mut urls: Vec<(&str, String)> = Vec::new();
        for (name, _) in demo::SERVICES {
            let port = free_port();
            let gunicorn = self.venv_bin.join("gunicorn");
            let mut cmd = if way == Way::Sdk {
                let mut cmd = Command::new(self.venv_bin.join("opentelemetry-instrument"));
                cmd.arg(&gunicorn);
                cmd
            } else {
                Command::new(&gunicorn)
            };
            cmd.args(["-w", "2", "--threads", "4", "--log-level", "warning", "-b"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--chdir")
                .arg(root.join("examples/flask"))
                .arg(format!("{name}:app"))
                .env("PGHOST", "127.0.0.1")
                .env("PGPORT", self.pg_port.to_string())
                .env("PGUSER", "postgres")
                .stdout(Stdio::null());
            for (callee, url) in &urls {
                let var = if *callee == "users" {
                    "USERS_URL"
                } else {
                    "INVENTORY_URL"
                };
                cmd.env(var, url);
            }
            if way == Way::Sdk {
                cmd.env("OTEL_SERVICE_NAME", name)
                    .env("OTEL_TRACES_EXPORTER", "otlp")
                    .env("OTEL_METRICS_EXPORTER", "none")
                    .env("OTEL_LOGS_EXPORTER", "none")
                    .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                    .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp);
            }
            services.push(demo::Running::spawn(name, &mut cmd)?);
            demo::wait_listening(name, port)?;
            urls.push((name, format!("http://127.0.0.1:{port}")));
        }
        let orders = urls.last().map(|(_, u)| u.clone()).unwrap_or_default();
        Ok((services, format!("{orders}/orders/1")))
    }

    /// One measured run of `way`.
    fn run(&self, way: Way, ztrace: &Path, otlp: &str, dir: &Path) -> Result<Row> {
        let (services, url) = self.start(way, otlp)?;
        let mut groups: Vec<u32> = services.iter().map(demo::Running::pid).collect();
        groups.push(self.postgres_group);
        let services_cpu = Cell::new(0.0);
        let agent_cpu = Cell::new(None);
        let load = |agent: u32| -> Result<f64> {
            // Warm-up: the pools' connections, Python's imports.
            load_orders(&url, &["-t2", "-c16", "-d2s"])?;
            let before = group_cpu_seconds(&groups);
            let agent_before = (agent != 0).then(|| cpu_seconds(agent)).transpose()?;
            let rps = load_orders(&url, LOAD_ARGS)?;
            services_cpu.set(group_cpu_seconds(&groups) - before);
            if let Some(b) = agent_before {
                agent_cpu.set(Some(cpu_seconds(agent)? - b));
            }
            Ok(rps)
        };
        let requests_per_sec = if way == Way::Ztrace {
            traced_run(ztrace, &ztrace_args(otlp), dir, load)?.requests_per_sec
        } else {
            load(0)?
        };
        let agent_cpu = agent_cpu.get();
        drop(services);
        let requests = (requests_per_sec * SDK_LOAD_SECONDS).max(1.0);
        Ok(Row {
            way,
            requests_per_sec,
            cpu_per_request: (services_cpu.get() + agent_cpu.unwrap_or(0.0)) / requests,
            agent_cpu_per_request: agent_cpu.map(|c| c / requests),
        })
    }

    /// [`SHAPE_REQUESTS`] requests `way`'s way, exported to the tests' OTLP receiver: spans per
    /// trace, and one trace's spans.
    fn trace_shape(&self, way: Way, ztrace: &Path, dir: &Path) -> Result<String> {
        let mut receiver = ztrace_e2e::otlp::OtlpReceiver::start();
        let endpoint = receiver.http_endpoint();
        let (services, url) = self.start(way, &endpoint)?;
        let send = || -> Result<()> {
            for _ in 0..SHAPE_REQUESTS {
                let out = Command::new("curl")
                    .args(["-sf", "-o", "/dev/null", &url])
                    .status()?;
                ensure!(out.success(), "GET {url} failed");
            }
            Ok(())
        };
        if way == Way::Ztrace {
            traced_run(ztrace, &ztrace_args(&endpoint), dir, |_| {
                send()?;
                // The hold-back window and the export batch.
                std::thread::sleep(Duration::from_secs(3));
                Ok(0.0)
            })?;
        } else {
            send()?;
        }
        drop(services); // the SDK exports what it holds on exit
        std::thread::sleep(Duration::from_secs(2));
        let spans = receiver.spans();
        receiver.stop();
        let mut traces: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for span in &spans {
            // Only traces that start at orders' server span: not the pools' start-up queries.
            let key = span.trace_id().unwrap_or_default().to_owned();
            let service = span.resource_str("service.name").unwrap_or("?");
            let kind = span.kind().unwrap_or("?").trim_start_matches("SPAN_KIND_");
            traces
                .entry(key)
                .or_default()
                .push(format!("{service} {kind} {}", span.name().unwrap_or("?")));
        }
        let requests: Vec<&Vec<String>> = traces
            .values()
            .filter(|spans| spans.iter().any(|s| s.starts_with("orders SERVER")))
            .collect();
        ensure!(
            !requests.is_empty(),
            "{}: no trace with orders' server span among {} spans",
            way.label(),
            spans.len()
        );
        let per_trace =
            requests.iter().map(|t| t.len()).sum::<usize>() as f64 / requests.len() as f64;
        let mut one = requests[requests.len() / 2].clone();
        one.sort();
        Ok(format!(
            "{} traces of GET /orders/1 for {SHAPE_REQUESTS} requests, {per_trace:.1} spans per trace: {}",
            requests.len(),
            one.join(", ")
        ))
    }
}

fn ztrace_args(otlp: &str) -> Vec<String> {
    [
        "--no-ui",
        "--otlp-endpoint",
        otlp,
        "--otlp-protocol",
        "http/protobuf",
        "--exe",
        "gunicorn",
        "--exe",
        "postgres",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Requests/s of a wrk run on orders; an error when any answer was not 2xx (a broken system is
/// fast, and not a measurement).
fn load_orders(url: &str, args: &[&str]) -> Result<f64> {
    let text = wrk_output(url, args)?;
    ensure!(
        !text.contains("Non-2xx"),
        "the example answered errors under load:\n{text}"
    );
    requests_per_sec(&text).with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))
}

/// utime + stime of every process in the process groups `groups` (threads included), in seconds.
fn group_cpu_seconds(groups: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // fields[0] is field 3 (state): the process group is field 5.
        let in_group = fields
            .get(2)
            .and_then(|g| g.parse::<u32>().ok())
            .is_some_and(|g| groups.contains(&g));
        if in_group {
            ticks += cpu_ticks(&stat).unwrap_or(0);
        }
    }
    ticks as f64 / per_second
}

fn report(rows: &[Row]) {
    println!();
    println!("| run | way | requests/s | CPU µs per request | of which ztrace |");
    println!("|---|---|---|---|---|");
    for (i, r) in rows.iter().enumerate() {
        println!(
            "| {} | {} | {:.0} | {:.0} | {} |",
            i + 1,
            r.way.label(),
            r.requests_per_sec,
            r.cpu_per_request * 1e6,
            r.agent_cpu_per_request
                .map_or("-".into(), |c| format!("{:.0}", c * 1e6))
        );
    }
    let median = |way: Way, f: &dyn Fn(&Row) -> f64| {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.way == way).map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let base_rps = median(Way::Untraced, &|r| r.requests_per_sec);
    let base_cpu = median(Way::Untraced, &|r| r.cpu_per_request);
    for way in [Way::Sdk, Way::Ztrace] {
        let rps = median(way, &|r| r.requests_per_sec);
        let cpu = median(way, &|r| r.cpu_per_request);
        println!(
            "{}: median throughput {:.3} of untraced, CPU per request {:.2}x untraced",
            way.label(),
            rps / base_rps.max(1.0),
            cpu / base_cpu.max(f64::MIN_POSITIVE)
        );
    }
    println!(
        "load: wrk {} GET /orders/1; gunicorn -w 2 --threads 4 per service; SDK: opentelemetry-instrument (flask, urllib, psycopg2), OTLP/HTTP; ztrace: {}",
        LOAD_ARGS.join(" "),
        ztrace_args("URL").join(" ")
    );
}
