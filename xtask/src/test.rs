//! `cargo xtask test`: everything CI needs on a fresh machine of the project's kind, then every test.
//!
//! 1. the eBPF toolchain (`setup`) and the test components: Debian's nginx, curl, wget, bpftool,
//!    postgresql (server, psql, pgbench), python3-psycopg2, golang-go with
//!    golang-github-lib-pq-dev and golang-github-jackc-pgx-v4-dev, openssl, nodejs,
//!    openjdk-17-jdk-headless, libpostgresql-jdbc-java, hey, python3-venv, chromium, and a venv at
//!    `target/test-venv` with grpcio and opentelemetry-proto (for the OTLP receiver in
//!    `tests/otlp_receiver.py`);
//! 2. the release build of the agent, and for `tests/tests/kubernetes.rs` its image
//!    (`cargo xtask image`), containerd, busybox-static and a venv at `target/k8s-venv` with
//!    kubernetes-validate and checkov;
//! 3. `cargo test --workspace --exclude ztrace-e2e`: the unprivileged tests, then every protocol
//!    parser's fuzz target for [`crate::fuzz::TEST_SECONDS`] (each counts as one test);
//! 4. the privileged end-to-end tests (`tests/`, crate `ztrace-e2e`), which need root and eBPF:
//!    their absence fails the run unless `--skip-privileged` was given; among them the kernel
//!    matrix (`tests/tests/kernels.rs`), which boots Debian's 5.10, 6.1 and 6.12 kernels in qemu
//!    from the root filesystem [`kernels::prepare`] caches under `target/kernel-matrix/`;
//! 5. one closing line `xtask: N passed, M failed`, counted from cargo's `test result:` lines.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::build::{self, Profile};
use crate::kernels;
use crate::toolchain::{self, apt_install};
use crate::util::{self, say};

/// Debian packages the end-to-end tests start or use.
const TEST_PACKAGES: &[&str] = &[
    "nginx",
    "curl",
    "wget",
    "python3-venv",
    "bpftool",
    // Headless browser for the viewer's page test (tests/tests/viewer.rs).
    "chromium",
    // PostgreSQL 15 server, psql and pgbench; psycopg2 for /usr/bin/python3; Go, lib/pq and pgx
    // for the compiled clients (tests/tests/postgres.rs).
    "postgresql",
    "python3-psycopg2",
    "golang-go",
    "golang-github-lib-pq-dev",
    "golang-github-jackc-pgx-v4-dev",
    // TLS (tests/tests/tls.rs): certificates made with `openssl req`; Node.js (OpenSSL linked
    // into /usr/bin/node); Java 17 runs a single-file source program (its own TLS, not traced).
    "openssl",
    "nodejs",
    "openjdk-17-jdk-headless",
    // The PostgreSQL JDBC driver for the Java client (tests/tests/postgres.rs).
    "libpostgresql-jdbc-java",
    // A stripped Go binary with crypto/tls (Go's TLS probes through .gopclntab).
    "hey",
    // Redis 7 server, redis-cli and redis-benchmark (tests/tests/redis.rs); memcached
    // (tests/tests/memcached.rs); nats-server (tests/tests/nats.rs).
    "redis-server",
    "redis-tools",
    "memcached",
    "nats-server",
    // RabbitMQ (AMQP 0-9-1) and Debian's pika for /usr/bin/python3 (tests/tests/amqp.rs).
    "rabbitmq-server",
    "python3-pika",
    // redis-py for /usr/bin/python3: the example's catalog service (tests/tests/flow.rs).
    "python3-redis",
    // The stack tests compile C clients and split their DWARF (tests/tests/stacks.rs).
    "gcc",
    "binutils",
    // Services under an app server, named by their application (tests/tests/edges.rs).
    "gunicorn",
    "uvicorn",
    "uwsgi-core",
    "uwsgi-plugin-python3",
    // gRPC in Go (grpc-go, GOPATH mode) and HTTP/2 load (h2load) (tests/tests/grpc.rs).
    "golang-google-grpc-dev",
    "golang-google-protobuf-dev",
    "nghttp2-client",
    // Go's x/net/http2/h2c server for the h2c upgrade (tests/tests/http2.rs).
    "golang-golang-x-net-dev",
    // Simulated hosts (network namespaces, veth) and a middlebox that strips TCP options
    // (tests/tests/xhost.rs).
    "iproute2",
    "iptables",
];
/// From Debian's backports suite: a newer Go than bookworm's 1.19, for Go crypto/tls's struct
/// offsets and RET probes on a current toolchain (tests/tests/tls.rs).
const BACKPORTS_TEST_PACKAGES: &[&str] = &["golang-1.23-go"];
/// Python packages of the test venv, and the import that proves they are there.
/// The OTLP receiver's (grpcio, opentelemetry-proto), and the OpenTelemetry SDK with urllib's
/// auto-instrumentation for the trace-context interop test (tests/tests/example.rs).
const VENV_PACKAGES: &[&str] = &[
    "grpcio",
    "opentelemetry-proto",
    "protobuf",
    "opentelemetry-distro",
    "opentelemetry-exporter-otlp",
    "opentelemetry-instrumentation-urllib",
    // The SDK-instrumented service of the traceparent interop test (tests/tests/inject.rs).
    "opentelemetry-instrumentation-wsgi",
    // Cache and messaging clients (tests/tests/redis.rs, memcached.rs, nats.rs).
    "redis",
    "pymemcache",
    "nats-py",
];
/// npm packages of the tests, installed under `target/test-npm` (the tests find them through
/// `ZTRACE_NODE_MODULES`): Node's gRPC (tests/tests/grpc.rs), AMQP 0-9-1 (tests/tests/amqp.rs)
/// and NATS (tests/tests/nats.rs) clients. Each with a file that proves it is there.
const NPM_PACKAGES: &[(&str, &str)] = &[
    ("@grpc/grpc-js@1.14", "@grpc/grpc-js/package.json"),
    ("amqplib@0.10", "amqplib/package.json"),
    ("nats@2", "nats/package.json"),
];
const VENV_CHECK: &str = "import grpc, opentelemetry.proto, opentelemetry.distro, opentelemetry.exporter.otlp.proto.grpc, opentelemetry.instrumentation.urllib, opentelemetry.instrumentation.wsgi, redis, pymemcache, nats";

/// Tests passed and failed over every cargo test run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
}

/// `cargo xtask test [--skip-privileged]`.
pub fn test(skip_privileged: bool) -> Result<()> {
    let started = Instant::now();
    let tally = match prepare_and_run(skip_privileged) {
        Ok(tally) => tally,
        Err(error) => {
            // Set-up or build failed: no test could run, and that is one failure, not zero.
            say!("error: {error:#}");
            Tally {
                passed: 0,
                failed: 1,
            }
        }
    };
    say!("test took {:.0} s", started.elapsed().as_secs_f64());
    say!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn prepare_and_run(skip_privileged: bool) -> Result<Tally> {
    toolchain::setup(false)?;
    let (python, matrix) = if skip_privileged {
        say!("--skip-privileged: not installing the end-to-end test components");
        (None, None)
    } else {
        (Some(install_test_components()?), Some(kernels::prepare()?))
    };
    let binary = build::build_after_setup(Profile::Release)?;
    let root = util::repo_root();
    if python.is_some() {
        // The DaemonSet's image, containerd and the manifests' checkers (tests/tests/kubernetes.rs).
        crate::image::prepare_tests(&binary)?;
    }

    say!("running the unit tests...");
    let mut unit = util::cargo();
    unit.current_dir(&root).args([
        "test",
        "--workspace",
        "--exclude",
        "ztrace-e2e",
        "--no-fail-fast",
    ]);
    let mut tally = run_counted(&mut unit)?;

    // Every protocol parser's fuzz target, briefly (`cargo xtask bench --fuzz` runs them an hour).
    match crate::fuzz::run_all(crate::fuzz::TEST_SECONDS) {
        Ok(outcomes) => {
            for outcome in outcomes {
                if outcome.passed {
                    tally.passed += 1;
                } else {
                    say!(
                        "error: fuzz target {} found a crash: {}",
                        outcome.target,
                        outcome.summary
                    );
                    tally.failed += 1;
                }
            }
        }
        Err(error) => {
            say!("error: the fuzz targets could not run: {error:#}");
            tally.failed += 1;
        }
    }

    if let Some(python) = &python {
        // The exporter against the real OTLP receiver (needs the venv, not root).
        say!("running the OTLP exporter test against the Python receiver...");
        let mut otlp = util::cargo();
        otlp.current_dir(&root).env("ZTRACE_PYTHON", python).args([
            "test",
            "-p",
            "ztrace",
            "--test",
            "otlp_export",
            "--",
            "--include-ignored",
        ]);
        tally = add(tally, run_counted(&mut otlp)?);
    }

    match (python, privileged_environment()) {
        (None, _) => say!("--skip-privileged: the end-to-end tests were NOT run"),
        (Some(python), Ok(())) => {
            say!("running the privileged end-to-end tests...");
            let mut e2e = util::cargo();
            e2e.current_dir(&root)
                .env("ZTRACE_BIN", &binary)
                .env("ZTRACE_PYTHON", &python)
                .env("ZTRACE_REPO", &root)
                .env(
                    "ZTRACE_NODE_MODULES",
                    util::target_dir().join("test-npm/node_modules"),
                )
                .env("ZTRACE_K8S_VENV", util::target_dir().join("k8s-venv"))
                .env(
                    "ZTRACE_KERNEL_MATRIX",
                    matrix.as_ref().map(|m| m.dir.clone()).unwrap_or_default(),
                )
                // The tests' own messages say what failed; a backtrace per panic only buries them.
                .env("RUST_BACKTRACE", "0")
                .args([
                    "test",
                    "--release",
                    "-p",
                    "ztrace-e2e",
                    "--no-fail-fast",
                    "--",
                    "--include-ignored",
                    "--test-threads=1",
                ]);
            tally = add(tally, run_counted(&mut e2e)?);
        }
        (Some(_), Err(why)) => {
            say!("error: the end-to-end tests cannot run here: {why}");
            say!("run as root on a kernel with eBPF, or pass --skip-privileged to run only the unit tests");
            tally.failed += 1;
        }
    }
    Ok(tally)
}

fn add(a: Tally, b: Tally) -> Tally {
    Tally {
        passed: a.passed + b.passed,
        failed: a.failed + b.failed,
    }
}

/// Debian packages and the Python venv; returns the venv's python.
fn install_test_components() -> Result<PathBuf> {
    apt_install(TEST_PACKAGES)?;
    toolchain::apt_install_backports(BACKPORTS_TEST_PACKAGES)?;
    let python = util::python_venv("test-venv", VENV_PACKAGES, VENV_CHECK)?;
    let npm = util::target_dir().join("test-npm");
    let missing = NPM_PACKAGES
        .iter()
        .any(|(_, proof)| !npm.join("node_modules").join(proof).is_file());
    if missing {
        let packages: Vec<&str> = NPM_PACKAGES.iter().map(|(p, _)| *p).collect();
        say!(
            "installing {} into {}...",
            packages.join(" "),
            npm.display()
        );
        std::fs::create_dir_all(&npm).with_context(|| format!("creating {}", npm.display()))?;
        // NodeSource's nodejs package (on these machines) carries npm and conflicts with
        // Debian's npm package: install that only where no npm is on PATH.
        if util::which("npm").is_none() {
            apt_install(&["npm"])?;
        }
        util::run(
            Command::new("npm")
                .arg("install")
                .arg("--prefix")
                .arg(&npm)
                .args(["--no-audit", "--no-fund", "--loglevel=error"])
                .args(&packages),
        )?;
    }
    Ok(python)
}

/// Whether the end-to-end tests can run: root, the kernel's BTF, and a permitted bpf() syscall.
fn privileged_environment() -> Result<(), String> {
    if !util::is_root() {
        return Err("not root (the agent loads eBPF programs)".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    let bpftool = util::which("bpftool")
        .or_else(|| Some(PathBuf::from("/usr/sbin/bpftool")).filter(|p| p.is_file()));
    match bpftool {
        Some(bpftool) => match Command::new(&bpftool)
            .args(["prog", "list"])
            .stdout(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "the bpf() syscall is refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(error) => Err(format!("could not run bpftool: {error}")),
        },
        None => Err("bpftool is missing, so eBPF could not be checked".into()),
    }
}

/// Runs a cargo test command, streaming its stdout through while counting its `test result:`
/// lines. A run that fails without any failed test (a build error, a crash) counts as one failure.
fn run_counted(cmd: &mut Command) -> Result<Tally> {
    run_counted_to(cmd, &mut std::io::stdout())
}

/// [`run_counted`] with the child's stdout copied to `out`, line by line as it comes.
fn run_counted_to(cmd: &mut Command, out: &mut dyn std::io::Write) -> Result<Tally> {
    say!("$ {}", util::display(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", util::display(cmd)))?;
    let mut tally = Tally::default();
    if let Some(stdout) = child.stdout.take() {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            out.write_all(&line)?;
            out.flush()?;
            if let Some(result) = parse_test_result(&String::from_utf8_lossy(&line)) {
                tally = add(tally, result);
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && tally.failed == 0 {
        say!(
            "error: `{}` failed ({status}) without reporting a failed test",
            util::display(cmd)
        );
        tally.failed += 1;
    }
    Ok(tally)
}

/// Parses libtest's summary: `test result: ok. 3 passed; 1 failed; 2 ignored; ...`.
fn parse_test_result(line: &str) -> Option<Tally> {
    let rest = line.trim().strip_prefix("test result:")?;
    let mut tally = Tally::default();
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(count)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        match what {
            "passed" => tally.passed = count,
            "failed" => tally.failed = count,
            _ => {}
        }
    }
    Some(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summaries_are_counted() {
        let line = "test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.01s\n";
        assert_eq!(
            parse_test_result(line),
            Some(Tally {
                passed: 12,
                failed: 0
            })
        );
        let line = "test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 31.20s";
        assert_eq!(
            parse_test_result(line),
            Some(Tally {
                passed: 4,
                failed: 2
            })
        );
        assert_eq!(parse_test_result("test foo ... ok"), None);
        assert_eq!(parse_test_result("running 3 tests"), None);
    }

    #[test]
    fn a_failing_run_without_a_summary_counts_as_a_failure() {
        // The child's output goes to a buffer: its fake summaries must not reach the real stdout.
        let mut out = Vec::new();
        let tally = run_counted_to(
            Command::new("sh").args(["-c", "echo compiling; exit 101"]),
            &mut out,
        )
        .expect("sh runs");
        assert_eq!(
            tally,
            Tally {
                passed: 0,
                failed: 1
            }
        );
        let tally = run_counted_to(Command::new("sh").args([
            "-c",
            "echo 'test result: ok. 2 passed; 0 failed; 0 ignored'; echo 'test result: FAILED. 1 passed; 1 failed; 0 ignored'; exit 101",
        ]), &mut out)
        .expect("sh runs");
        assert!(String::from_utf8_lossy(&out).starts_with("compiling\n"));
        assert_eq!(
            tally,
            Tally {
                passed: 3,
                failed: 1
            }
        );
    }
}
