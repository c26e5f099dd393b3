//! The command line and environment: one clap struct, every option also settable by environment
//! (standard OpenTelemetry names where they exist).

use std::path::PathBuf;

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

    /// Bytes of payload copied per syscall (at most 16384). Requests whose headers are larger
    /// are still timed, with what fits.
    #[arg(long, env = "ZTRACE_CAPTURE_BYTES", default_value_t = 4096)]
    pub capture_bytes: usize,

    /// Configuration file (reserved; not read yet).
    #[arg(long, env = "ZTRACE_CONFIG", hide = true)]
    pub config: Option<PathBuf>,

    /// Log level: error, warn, info, debug, trace (or a tracing filter directive).
    #[arg(long, env = "ZTRACE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

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
    fn pids_and_exes_repeat() {
        let c = Config::try_parse_from(["ztrace", "--pid", "1", "--pid=2", "--exe", "nginx"]).expect("parse");
        assert_eq!(c.pids, vec![1, 2]);
        assert_eq!(c.exe_names, vec!["nginx".to_string()]);
    }
}
