//! `cargo xtask`: the project's own build, run, test and benchmark commands.
//!
//! Everything a developer or CI needs on a fresh Debian machine of the project's kind goes through
//! here, so that the README and `.ci/run` stay one line each:
//!
//! - `setup`: the eBPF toolchain (nightly + rust-src, bpf-linker on LLVM 22), installed if missing;
//! - `build-ebpf`, `build`, `run`: the kernel object, then the agent that embeds it;
//! - `test`: test components, unit tests, then the privileged end-to-end tests, with one summary line;
//! - `bench`: nginx, PostgreSQL and the Go example system under load, with and without ztrace;
//! - `image`: the container image of `deploy/` (podman, from scratch);
//! - `demo`: the example system of `examples/` traced by ztrace, with the viewer.
//!
//! It deliberately knows nothing about the agent's internals: it talks to it only through its
//! command line, its `ztrace is ready` line and its `ztrace stats: {...}` line.

mod bench;
mod build;
mod demo;
mod fuzz;
mod image;
mod kernels;
mod test;
mod toolchain;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "ztrace's build, run, test and bench commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make sure the eBPF toolchain (nightly + rust-src, bpf-linker 0.13.0 on LLVM 22) is installed.
    Setup {
        /// Only report what is missing and what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build the kernel programs: ebpf/target/bpfel-unknown-none/release/ztrace.
    BuildEbpf,
    /// Set up, build the kernel programs, then the agent embedding them (target/release/ztrace).
    Build {
        /// Build the agent with the dev profile (target/debug/ztrace).
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run the agent (through `sudo -E` when not root) with the given arguments.
    Run {
        /// Arguments for ztrace, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install test components, build, run the unit tests, then the privileged end-to-end tests.
    Test {
        /// Do not run the end-to-end tests that need root and eBPF (otherwise their absence fails).
        #[arg(long)]
        skip_privileged: bool,
    },
    /// Build the container image (deploy/Containerfile) with podman: the agent and its shared
    /// libraries on an empty base; prints its size.
    Image,
    /// Prepare the kernel matrix of the end-to-end tests (a Debian root filesystem with Debian's
    /// 5.10, 6.1 and 6.12 kernels under target/kernel-matrix/; cached). `test` does it too.
    KernelMatrix,
    /// Measure ztrace's overhead on nginx under wrk (no timing assertions).
    Bench {
        /// Arguments for the agent (default: `--no-ui --print=json`, the capture path alone;
        /// `-- --print=json` measures the default set-up with the trace store).
        #[arg(last = true)]
        agent_args: Vec<String>,
        /// Only the example system's benchmark (the Go example under wrk).
        #[arg(long)]
        example: bool,
        /// Only the stacks benchmark (requests/s with stacks on vs off, symbol cache hit rate,
        /// first-span delay and agent memory with large binaries).
        #[arg(long)]
        stacks: bool,
        /// Only the capture path's instructions per span (a replay under callgrind: stable on
        /// a busy machine).
        #[arg(long)]
        capture: bool,
        /// Only the fuzz targets of the protocol parsers, an hour in all.
        #[arg(long)]
        fuzz: bool,
        /// Only the nginx load in each of ztrace's modes: printing JSON, exporting OTLP, and the
        /// default (trace store and viewer).
        #[arg(long)]
        modes: bool,
        /// Only Redis under `redis-benchmark -P 16` (pipelined SET and GET).
        #[arg(long)]
        redis: bool,
        /// Only nginx under wrk (plain HTTP/1, three arms).
        #[arg(long)]
        http: bool,
        /// Only PostgreSQL under `pgbench -M prepared -S` (three arms).
        #[arg(long)]
        postgres: bool,
        /// Only the nginx load with trace-context propagation (TCP option and traceparent
        /// header) on and off, in alternating pairs.
        #[arg(long)]
        propagation: bool,
        /// Only the comparison with OpenTelemetry's zero-code Python instrumentation (the
        /// example as Flask apps under gunicorn: untraced, with the SDK, with ztrace).
        #[arg(long)]
        sdk: bool,
        /// Only gRPC under h2load (unary calls to the grpc-go server, 16 streams on each of
        /// 4 connections).
        #[arg(long)]
        grpc: bool,
        /// Only the faults: the OTLP backend down, then silent, for ZTRACE_FAULT_MINUTES (10)
        /// each under 5,000 spans/s, then process churn (curl and psql loops) as long.
        #[arg(long)]
        faults: bool,
    },
    /// Run the example system (orders, users, inventory and PostgreSQL) traced by ztrace, send a
    /// few requests and print the viewer's URL; Ctrl-C stops everything.
    Demo {
        /// Which implementation of the services to run.
        #[arg(long, value_enum, default_value = "python")]
        lang: demo::Lang,
        /// The port of the demo's PostgreSQL server.
        #[arg(long, default_value_t = 54329)]
        pg_port: u16,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup { dry_run } => toolchain::setup(dry_run),
        Command::BuildEbpf => build::build_ebpf().map(|_| ()),
        Command::Build { debug } => build::build(build::profile(debug)).map(|_| ()),
        Command::Run { args } => build::run(&args),
        Command::Test { skip_privileged } => test::test(skip_privileged),
        Command::Image => image::image(),
        Command::KernelMatrix => kernels::prepare().map(|_| ()),
        Command::Bench {
            agent_args,
            example,
            stacks,
            capture,
            modes,
            fuzz,
            redis,
            http,
            postgres,
            propagation,
            sdk,
            grpc,
            faults,
        } => bench::bench(
            &agent_args,
            bench::Only {
                example,
                stacks,
                capture,
                modes,
                fuzz,
                redis,
                http,
                postgres,
                propagation,
                sdk,
                grpc,
                faults,
            },
        ),
        Command::Demo { lang, pg_port } => demo::demo(lang, pg_port),
    }
}
