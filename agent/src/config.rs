//! The command line and environment: one clap struct, every option also settable by environment
//! (standard OpenTelemetry names where they exist).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

/// ztrace: every HTTP request of every process on this host becomes a span, with no code changes.
#[derive(Debug, Clone, Parser)]
#[command(name = "ztrace", version, about, long_about = None)]
pub struct Config {
    /// OTLP endpoint to send spans to, e.g. http://127.0.0.1:4317 (gRPC) or http://127.0.0.1:4318
    /// (HTTP). With http/protobuf, `/v1/traces` is appended.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP traces endpoint, used as is (takes precedence over --otlp-endpoint).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", hide = true)]
    pub otlp_traces_endpoint: Option<String>,

    /// OTLP protocol. Default: http/protobuf when the endpoint's port is 4318, else grpc.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_parser = ["grpc", "http/protobuf"])]
    pub otlp_protocol: Option<String>,

    /// Headers sent with every OTLP export, as `key=value,key2=value2`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", hide_env_values = true)]
    pub otlp_headers: Option<String>,

    /// Print every span on stdout: `text` (default) or `json` (one object per line).
    #[arg(long, env = "ZTRACE_PRINT", num_args = 0..=1, default_missing_value = "text", require_equals = true)]
    pub print: Option<PrintArg>,

    /// Trace only this process (repeatable; combines with --exe).
    #[arg(long = "pid", env = "ZTRACE_PID", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Trace only processes with this executable name (repeatable; matched on the kernel's
    /// 15-character process name).
    #[arg(long = "exe", env = "ZTRACE_EXE", value_delimiter = ',')]
    pub exe_names: Vec<String>,

    /// Trace only the processes that are members of this cgroup v2 directory, e.g.
    /// /sys/fs/cgroup/unified/host1 (members of its child cgroups are not traced). Combines
    /// with --pid and --exe. The trace-context `sock_ops` program is attached there too.
    #[arg(long, env = "ZTRACE_CGROUP")]
    pub cgroup: Option<PathBuf>,

    /// Carry each request's trace context to the host that receives it: in a TCP header option
    /// (no application byte changes), so that a receiving host running ztrace continues the
    /// same trace, and as a `traceparent` header added to plaintext HTTP/1 requests that carry
    /// none, for OpenTelemetry SDKs there. `on` leaves this host's loopback connections alone
    /// (the kernel hands their context over directly); `all` adds the header on them too, for
    /// an SDK-instrumented service on this host; `off` carries nothing.
    #[arg(long, env = "ZTRACE_PROPAGATE", default_value = "on", value_parser = ["on", "all", "off"], require_equals = true)]
    pub propagate: String,

    /// Bytes of payload copied per syscall (at most 16384). Requests whose headers are larger
    /// are still timed, with what fits.
    #[arg(long, env = "ZTRACE_CAPTURE_BYTES", default_value_t = 4096)]
    pub capture_bytes: usize,

    /// Size of the ring buffer the kernel programs write events into, in MiB (a power of two,
    /// 1 to 256). It is the agent's slack when it falls behind: a burst that overflows it is
    /// dropped and counted (`kernel_ringbuf_full`). Its pages count twice in the agent's RSS
    /// (the kernel maps the data twice, for records that wrap).
    #[arg(long, env = "ZTRACE_RING_BUFFER_MIB", default_value_t = 16)]
    pub ring_buffer_mib: u32,

    /// Export the values bound to each PostgreSQL prepared-statement execution as
    /// `db.query.parameter.<index>` (off by default: they are often personal data).
    #[arg(long, env = "ZTRACE_DB_QUERY_PARAMETERS")]
    pub db_query_parameters: bool,

    /// Capture the user stack of each client request (HTTP, PostgreSQL) at its first write and
    /// put the symbolized stack on the span (`code.stacktrace`, `code.function.name`, ...).
    #[arg(long, env = "ZTRACE_STACKS", default_value = "on", value_parser = ["on", "off"])]
    pub stacks: String,

    /// Bytes of user stack copied per stack for unwinding code without frame pointers (at most
    /// 16384; 0 keeps only the kernel's frame-pointer walk).
    #[arg(long, env = "ZTRACE_STACK_BYTES", default_value_t = 8192)]
    pub stack_bytes: usize,

    /// Stacks each process may send per second on average (bursts of twice as many); beyond it
    /// spans have no stack and the kernel counts what it skipped.
    #[arg(long, env = "ZTRACE_STACKS_PER_SECOND", default_value_t = 200)]
    pub stacks_per_second: u32,

    /// Directory searched for separate debug files by build id (`DIR/.build-id/xx/yyyy.debug`),
    /// besides /usr/lib/debug (repeatable).
    #[arg(long = "debug-dir", env = "ZTRACE_DEBUG_DIR", value_delimiter = ',')]
    pub debug_dirs: Vec<PathBuf>,

    /// Memory for loaded symbols (DWARF, unwind tables, symbol tables), e.g. 192MiB; the least
    /// recently used binaries are dropped beyond it.
    #[arg(long, env = "ZTRACE_SYMBOL_CACHE_SIZE", default_value = "192MiB", value_parser = parse_size)]
    pub symbol_cache_size: u64,

    /// How long a TLS library or executable found in processes stays probed after the last
    /// process that maps it exited (short-lived clients that run again and again keep theirs).
    #[arg(long, env = "ZTRACE_TLS_DETACH_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub tls_detach_after: Duration,

    /// Attach an empty program at every hook instead of ztrace's own (nothing is traced): the
    /// floor `cargo xtask bench` compares against.
    #[arg(long, hide = true)]
    pub empty_programs: bool,

    /// Configuration file (reserved; not read yet).
    #[arg(long, env = "ZTRACE_CONFIG", hide = true)]
    pub config: Option<PathBuf>,

    /// Log level: error, warn, info, debug, trace (or a tracing filter directive).
    #[arg(long, env = "ZTRACE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Address of the trace viewer (web pages and JSON API). Spans contain request data: an
    /// address other than loopback exposes them to the network.
    #[arg(long, env = "ZTRACE_UI", default_value = "127.0.0.1:9400")]
    pub ui: SocketAddr,

    /// Address of the health endpoint: /healthz, /readyz (ready once the programs are attached)
    /// and /metrics (Prometheus text). Off unless given (the Kubernetes manifests set it).
    #[arg(long, env = "ZTRACE_HEALTH")]
    pub health: Option<SocketAddr>,

    /// The Kubernetes node this agent runs on (the DaemonSet sets it from `spec.nodeName`):
    /// `k8s.node.name` of processes in pods, and `host.name` of every process.
    #[arg(long, env = "K8S_NODE_NAME")]
    pub k8s_node_name: Option<String>,

    /// The container runtime's CRI socket, asked for the labels and annotations of the pods of
    /// this node (`app.kubernetes.io/name`, `resource.opentelemetry.io/*`, the controllers'
    /// labels). Default: the first of /run/containerd/containerd.sock, /run/crio/crio.sock,
    /// /var/run/crio/crio.sock that exists; `none` turns it off.
    #[arg(long, env = "ZTRACE_CRI_SOCKET")]
    pub cri_socket: Option<String>,

    /// Run without the viewer and without the embedded store (export-only mode, e.g. a DaemonSet
    /// that sends everything to an OTLP backend).
    #[arg(long, env = "ZTRACE_NO_UI")]
    pub no_ui: bool,

    /// Directory of the embedded trace store. Default: /var/lib/ztrace, or
    /// $XDG_STATE_HOME/ztrace (~/.local/state/ztrace) when that is not writable.
    #[arg(long, env = "ZTRACE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// How long stored traces are kept, e.g. 30m, 24h, 7d.
    #[arg(long, env = "ZTRACE_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub retention: Duration,

    /// Most spans stored per second (0: no limit). Beyond it whole traces are left out of the
    /// store, chosen by trace id; export and --print still get every span.
    #[arg(long, env = "ZTRACE_STORE_MAX_SPANS_PER_SECOND", default_value_t = DEFAULT_STORE_MAX_SPANS_PER_SECOND)]
    pub store_max_spans_per_second: u64,

    /// Largest size of the trace store, e.g. 500MiB, 1GiB, 2GB; the oldest traces go first.
    #[arg(long, env = "ZTRACE_MAX_STORE_SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub max_store_size: u64,
}

/// `90s`, `30m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 24h or 7d"))?;
    let secs = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}: use s, m, h, d or w"
            ))
        }
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// `1GiB`, `500MiB`, `2GB`, `100M`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 500MiB or 1GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1_000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        "t" | "tib" => 1 << 40,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?}: use KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Spans the store takes per second at most, by default (`--store-max-spans-per-second`).
pub const DEFAULT_STORE_MAX_SPANS_PER_SECOND: u64 = 10_000;

/// Output format of `--print`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrintArg {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_takes_an_optional_format() {
        let c = Config::try_parse_from(["ztrace", "--print"]).expect("parse");
        assert_eq!(c.print, Some(PrintArg::Text));
        let c = Config::try_parse_from(["ztrace", "--print=json"]).expect("parse");
        assert_eq!(c.print, Some(PrintArg::Json));
        let c = Config::try_parse_from(["ztrace"]).expect("parse");
        assert_eq!(c.print, None);
    }

    #[test]
    fn viewer_and_store_options() {
        let c = Config::try_parse_from(["ztrace"]).expect("parse");
        assert_eq!(c.ui, "127.0.0.1:9400".parse().expect("addr"));
        assert!(!c.no_ui);
        assert_eq!(c.retention, Duration::from_secs(24 * 3600));
        assert_eq!(c.max_store_size, 1 << 30);
        assert_eq!(c.stacks, "on");
        assert_eq!(c.stack_bytes, 8192);
        assert!(Config::try_parse_from(["ztrace", "--stacks=maybe"]).is_err());
        let c = Config::try_parse_from([
            "ztrace",
            "--ui",
            "0.0.0.0:9500",
            "--data-dir",
            "/tmp/z",
            "--retention=7d",
            "--max-store-size=500MB",
            "--no-ui",
        ])
        .expect("parse");
        assert_eq!(c.ui.port(), 9500);
        assert_eq!(c.data_dir, Some(PathBuf::from("/tmp/z")));
        assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.max_store_size, 500_000_000);
        assert!(c.no_ui);
        assert!(Config::try_parse_from(["ztrace", "--retention=5y"]).is_err());
        assert!(Config::try_parse_from(["ztrace", "--max-store-size=lots"]).is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert!(parse_size("").is_err());
    }

    #[test]
    fn pids_and_exes_repeat() {
        let c = Config::try_parse_from(["ztrace", "--pid", "1", "--pid=2", "--exe", "nginx"])
            .expect("parse");
        assert_eq!(c.pids, vec![1, 2]);
        assert_eq!(c.exe_names, vec!["nginx".to_string()]);
    }

    #[test]
    fn cgroup_and_propagation() {
        let c = Config::try_parse_from(["ztrace"]).expect("parse");
        assert_eq!((c.cgroup, c.propagate.as_str()), (None, "on"));
        let c =
            Config::try_parse_from(["ztrace", "--cgroup", "/sys/fs/cgroup/h1", "--propagate=off"])
                .expect("parse");
        assert_eq!(
            (c.cgroup, c.propagate.as_str()),
            (Some(PathBuf::from("/sys/fs/cgroup/h1")), "off")
        );
        assert!(Config::try_parse_from(["ztrace", "--propagate=maybe"]).is_err());
    }
}
