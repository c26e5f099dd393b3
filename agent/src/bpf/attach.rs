//! The attach table: every kernel program, what it attaches to, whether ztrace can run without
//! it, and what is lost when it is missing. Printed at start so that a user on an unusual kernel
//! knows at once what they will and will not see.

use std::fmt::Write as _;

/// One kernel program and its hook.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Program (function) name in the eBPF object.
    pub program: &'static str,
    /// Tracepoint category and name.
    pub category: &'static str,
    pub name: &'static str,
    /// Without a required hook ztrace refuses to start.
    pub required: bool,
    /// What the user does not see without it.
    pub without: &'static str,
}

const fn tp(
    program: &'static str,
    name: &'static str,
    required: bool,
    without: &'static str,
) -> Hook {
    Hook {
        program,
        category: "syscalls",
        name,
        required,
        without,
    }
}

/// Every program of the eBPF object, in attach order (exits before entries, so that no entry
/// saves arguments that no exit would consume).
pub const HOOKS: &[Hook] = &[
    tp(
        "zt_exit_connect",
        "sys_exit_connect",
        true,
        "client connections",
    ),
    tp(
        "zt_enter_connect",
        "sys_enter_connect",
        true,
        "client connections",
    ),
    tp(
        "zt_exit_accept4",
        "sys_exit_accept4",
        true,
        "server connections",
    ),
    tp(
        "zt_enter_accept4",
        "sys_enter_accept4",
        true,
        "server connections",
    ),
    tp(
        "zt_exit_accept",
        "sys_exit_accept",
        false,
        "server connections of programs using accept(2)",
    ),
    tp(
        "zt_enter_accept",
        "sys_enter_accept",
        false,
        "server connections of programs using accept(2)",
    ),
    tp(
        "zt_exit_read",
        "sys_exit_read",
        true,
        "data read with read(2)",
    ),
    tp(
        "zt_exit_write",
        "sys_exit_write",
        true,
        "data written with write(2)",
    ),
    tp(
        "zt_enter_write",
        "sys_enter_write",
        true,
        "data written with write(2)",
    ),
    tp(
        "zt_exit_recvfrom",
        "sys_exit_recvfrom",
        false,
        "data read with recv(2)/recvfrom(2)",
    ),
    tp(
        "zt_exit_sendto",
        "sys_exit_sendto",
        false,
        "data written with send(2)/sendto(2)",
    ),
    tp(
        "zt_enter_sendto",
        "sys_enter_sendto",
        false,
        "data written with send(2)/sendto(2)",
    ),
    tp(
        "zt_exit_readv",
        "sys_exit_readv",
        false,
        "data read with readv(2)",
    ),
    tp(
        "zt_enter_readv",
        "sys_enter_readv",
        false,
        "data read with readv(2)",
    ),
    tp(
        "zt_exit_writev",
        "sys_exit_writev",
        false,
        "data written with writev(2) (nginx responses)",
    ),
    tp(
        "zt_enter_writev",
        "sys_enter_writev",
        false,
        "data written with writev(2) (nginx responses)",
    ),
    tp(
        "zt_exit_recvmsg",
        "sys_exit_recvmsg",
        false,
        "data read with recvmsg(2)",
    ),
    tp(
        "zt_enter_recvmsg",
        "sys_enter_recvmsg",
        false,
        "data read with recvmsg(2)",
    ),
    tp(
        "zt_exit_sendmsg",
        "sys_exit_sendmsg",
        false,
        "data written with sendmsg(2)",
    ),
    tp(
        "zt_enter_sendmsg",
        "sys_enter_sendmsg",
        false,
        "data written with sendmsg(2)",
    ),
    tp(
        "zt_exit_sendfile64",
        "sys_exit_sendfile64",
        false,
        "response bodies sent with sendfile(2): their exchanges go out of step",
    ),
    tp(
        "zt_enter_sendfile64",
        "sys_enter_sendfile64",
        false,
        "response bodies sent with sendfile(2): their exchanges go out of step",
    ),
    tp(
        "zt_enter_close",
        "sys_enter_close",
        true,
        "connection ends (responses delimited by close)",
    ),
    tp(
        "zt_enter_dup2",
        "sys_enter_dup2",
        false,
        "fds replaced by dup2(2) may be misread",
    ),
    tp(
        "zt_enter_dup3",
        "sys_enter_dup3",
        false,
        "fds replaced by dup3(2) may be misread",
    ),
    Hook {
        program: "zt_sched_exec",
        category: "sched",
        name: "sched_process_exec",
        required: false,
        without: "TLS libraries of programs started later are found only on their first connection",
    },
];

/// The OpenSSL entry uprobe programs and the function each goes on.
pub const OPENSSL_PROBES: &[(&str, &str)] = &[
    ("zt_ssl_read", "SSL_read"),
    ("zt_ssl_write", "SSL_write"),
    ("zt_ssl_read_ex", "SSL_read_ex"),
    ("zt_ssl_write_ex", "SSL_write_ex"),
    ("zt_ssl_set_fd", "SSL_set_fd"),
];
/// OpenSSL functions probed at entry only (they move no plaintext).
pub const OPENSSL_ENTRY_ONLY: &[&str] = &["SSL_set_fd"];
/// The one uretprobe program of the four OpenSSL read/write functions.
pub const OPENSSL_RETURN: &str = "zt_ssl_ret";
/// Go `crypto/tls`: entry programs by function (as `tls::go::FUNCTIONS` names them), and the
/// program on every RET instruction.
pub const GO_PROBES: &[(&str, &str)] = &[
    ("zt_go_tls_write", "(*Conn).Write"),
    ("zt_go_tls_read", "(*Conn).Read"),
];
pub const GO_RETURN: &str = "zt_go_tls_ret";

/// The `sock_ops` program that carries trace context to other hosts in a TCP option.
pub const SOCK_OPS: &str = "zt_sockops";
/// The same program without the socket map of `sk_msg` (loaded when the kernel refused that
/// map: no `CAP_NET_ADMIN`): the TCP option only.
pub const SOCK_OPS_OPTION: &str = "zt_sockops_option";

/// Whether trace context is carried between hosts (`--propagate`), for the attach table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// `sock_ops` attached to this cgroup: its sockets' requests carry their context.
    On { cgroup: std::path::PathBuf },
    /// `--propagate=off`.
    Off,
    /// Asked for, but the program could not be loaded or attached.
    Failed {
        cgroup: Option<std::path::PathBuf>,
        reason: String,
    },
}

impl Propagation {
    /// The attach-table line.
    pub fn line(&self) -> String {
        const WITHOUT: &str = "requests to other hosts start new traces there";
        match self {
            Propagation::On { cgroup } => {
                format!("  ok    optional  sock_ops on cgroup {}: trace context in a TCP option (kind 254)", cgroup.display())
            }
            Propagation::Off => format!("  off   optional  sock_ops: --propagate=off ({WITHOUT})"),
            Propagation::Failed { cgroup, reason } => format!(
                "  FAIL  optional  sock_ops on cgroup {}: {reason} (without it: {WITHOUT})",
                cgroup
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |c| c.display().to_string())
            ),
        }
    }
}

/// The `sk_msg` program that adds `traceparent` to plaintext HTTP/1 requests.
pub const INJECT: &str = "zt_inject";
/// Its second half (the write), reached by a tail call.
pub const INJECT_WRITE: &str = "zt_inject_write";

/// Whether plaintext HTTP/1 requests get a `traceparent` header (`--propagate`), for the attach
/// table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Injection {
    /// `sk_msg` attached to the client sockets that `sock_ops` sees on the traced cgroup: those
    /// to other hosts, and with `loopback` (`--propagate=all`) this host's loopback ones too.
    On { loopback: bool },
    /// `--propagate=off`, or `sock_ops` not attached (the sockets would never reach it).
    Off(&'static str),
    /// Asked for, but the program could not be loaded or attached.
    Failed(String),
}

impl Injection {
    /// The attach-table line.
    pub fn line(&self) -> String {
        const WITHOUT: &str =
            "an OpenTelemetry SDK receiving a plaintext HTTP/1 request does not continue its trace";
        match self {
            Injection::On { loopback } => format!(
                "  ok    optional  sk_msg on client sockets: traceparent added to plaintext HTTP/1 requests that carry none, {}",
                if *loopback {
                    "loopback ones too (--propagate=all)"
                } else {
                    "but on loopback (--propagate=all adds it there too)"
                }
            ),
            Injection::Off(why) => format!("  off   optional  sk_msg: {why} ({WITHOUT})"),
            Injection::Failed(reason) => {
                format!("  FAIL  optional  sk_msg on client sockets: {reason} (without it: {WITHOUT})")
            }
        }
    }
}

/// The outcome of attaching one hook.
#[derive(Debug)]
pub struct AttachResult {
    pub hook: Hook,
    /// `None` when attached, else why not.
    pub error: Option<String>,
}

/// The attach table as printed at start.
pub fn render(results: &[AttachResult]) -> String {
    let mut out = String::from("attach table:\n");
    for r in results {
        let h = &r.hook;
        let need = if h.required { "required" } else { "optional" };
        let _ = match &r.error {
            None => writeln!(out, "  ok    {need}  tracepoint {}/{}", h.category, h.name),
            Some(e) => writeln!(
                out,
                "  FAIL  {need}  tracepoint {}/{}: {e} (without it: {})",
                h.category, h.name, h.without
            ),
        };
    }
    let ok = results.iter().filter(|r| r.error.is_none()).count();
    let _ = write!(out, "  {ok} of {} programs attached", results.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_is_listed_once_with_its_exit_before_its_entry() {
        let mut seen = std::collections::HashSet::new();
        for (i, h) in HOOKS.iter().enumerate() {
            assert!(seen.insert(h.program), "{} listed twice", h.program);
            if let Some(rest) = h.name.strip_prefix("sys_enter_") {
                let exit = format!("sys_exit_{rest}");
                if let Some(j) = HOOKS.iter().position(|x| x.name == exit) {
                    assert!(j < i, "{exit} must be attached before {}", h.name);
                }
            }
        }
    }

    #[test]
    fn render_names_failures_and_their_cost() {
        let results = vec![
            AttachResult {
                hook: HOOKS[0],
                error: None,
            },
            AttachResult {
                hook: *HOOKS
                    .iter()
                    .find(|h| h.program == "zt_exit_writev")
                    .expect("listed"),
                error: Some("no such tracepoint".into()),
            },
        ];
        let text = render(&results);
        assert!(text.contains("ok    required  tracepoint syscalls/sys_exit_connect"));
        assert!(text.contains("FAIL  optional  tracepoint syscalls/sys_exit_writev: no such tracepoint (without it: data written with writev(2)"));
        assert!(text.ends_with("1 of 2 programs attached"));
    }

    #[test]
    fn the_propagation_line_says_on_off_or_why_not() {
        let on = Propagation::On {
            cgroup: "/sys/fs/cgroup/h1".into(),
        }
        .line();
        assert_eq!(on, "  ok    optional  sock_ops on cgroup /sys/fs/cgroup/h1: trace context in a TCP option (kind 254)");
        assert!(Propagation::Off
            .line()
            .starts_with("  off   optional  sock_ops: --propagate=off"));
        let failed = Propagation::Failed {
            cgroup: None,
            reason: "no cgroup v2 hierarchy is mounted".into(),
        }
        .line();
        assert!(failed.starts_with("  FAIL  optional  sock_ops on cgroup -: no cgroup v2 hierarchy is mounted (without it:"), "{failed}");
    }

    #[test]
    fn the_injection_line_says_on_off_or_why_not() {
        for loopback in [false, true] {
            assert!(Injection::On { loopback }
                .line()
                .starts_with("  ok    optional  sk_msg on client sockets: traceparent added"));
        }
        assert!(Injection::On { loopback: false }
            .line()
            .ends_with("but on loopback (--propagate=all adds it there too)"));
        assert!(Injection::Off("--propagate=off")
            .line()
            .starts_with("  off   optional  sk_msg: --propagate=off ("));
        let failed = Injection::Failed("load: invalid argument".into()).line();
        assert!(
            failed.starts_with(
                "  FAIL  optional  sk_msg on client sockets: load: invalid argument (without it:"
            ),
            "{failed}"
        );
    }
}
