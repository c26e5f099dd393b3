//! The capabilities ztrace runs with, read from `/proc/self/status` (`CapEff`), and what each
//! missing one costs.
//!
//! Measured on Linux 6.18 in a container started with exactly the listed capabilities (podman,
//! `--cap-drop=ALL --cap-add=...`, host PID namespace): loading the programs needs `CAP_BPF`,
//! attaching them to tracepoints `CAP_PERFMON`, and uprobes (the kernel's `uprobe` perf PMU)
//! `CAP_SYS_ADMIN`, which also stands in for the other two. Reading other processes' `/proc`
//! entries (`maps`, `root`, `exe`, `environ`) needs `CAP_SYS_PTRACE`; those of processes run by
//! another user, `CAP_DAC_READ_SEARCH`. `CAP_SYS_RESOURCE` is not needed: since 5.11 BPF memory
//! is charged to the memory cgroup, not to `RLIMIT_MEMLOCK`.
//!
//! Not done here: checking the bounding set or file capabilities; only the effective set counts.

/// Capability numbers (linux/capability.h).
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// An effective capability set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps(pub u64);

impl Caps {
    /// The `CapEff:` line of `/proc/self/status`; `None` when there is none (not Linux).
    pub fn from_status(status: &str) -> Option<Caps> {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))?
            .trim();
        u64::from_str_radix(hex, 16).ok().map(Caps)
    }

    /// This process's effective set; `None` when `/proc/self/status` cannot be read.
    pub fn current() -> Option<Caps> {
        Caps::from_status(&std::fs::read_to_string("/proc/self/status").ok()?)
    }

    pub fn has(self, cap: u32) -> bool {
        self.0 & (1u64 << cap) != 0
    }
}

/// A capability that ztrace cannot start without: the one sentence for the user.
pub fn missing_required(caps: Caps) -> Option<&'static str> {
    let admin = caps.has(CAP_SYS_ADMIN);
    if !admin && !caps.has(CAP_BPF) {
        return Some("ztrace lacks CAP_BPF (or CAP_SYS_ADMIN), without which the kernel loads none of its eBPF programs: add it to the container's capabilities or run as root");
    }
    if !admin && !caps.has(CAP_PERFMON) {
        return Some("ztrace lacks CAP_PERFMON (or CAP_SYS_ADMIN), without which its programs cannot attach to the syscall tracepoints: add it to the container's capabilities or run as root");
    }
    None
}

/// The sentence for a `bpf()` refused although `CAP_BPF` is there: the container runtimes'
/// default seccomp profiles (Docker's, containerd's, podman's) allow `bpf()` and
/// `perf_event_open()` only with `CAP_SYS_ADMIN` (measured with podman 4.3).
pub const SECCOMP_REFUSED: &str = "the bpf() system call was refused although ztrace has CAP_BPF: the container's seccomp profile blocks it (runtimes' default profiles allow bpf() only with CAP_SYS_ADMIN): add CAP_SYS_ADMIN or use an unconfined seccomp profile";

/// Why `sk_msg` is off when the kernel refused its socket map (see `standin`).
pub const SOCKET_MAP_REFUSED: &str = "the kernel creates its socket map (BPF_MAP_TYPE_SOCKHASH) only with CAP_NET_ADMIN (recent kernels also take CAP_SYS_ADMIN): add CAP_NET_ADMIN to the container's capabilities";

/// A `sock_ops` or `sk_msg` load refused with EPERM: the kernel loads these network programs
/// only with `CAP_NET_ADMIN` or `CAP_SYS_ADMIN`. Says so after `reason` when this process has
/// neither; `reason` as it is otherwise.
pub fn net_admin_hint(reason: &str) -> String {
    let lacks = Caps::current().is_some_and(|c| !c.has(CAP_NET_ADMIN) && !c.has(CAP_SYS_ADMIN));
    if lacks && reason.contains("Operation not permitted") {
        format!("{reason} (the kernel loads network programs only with CAP_NET_ADMIN or CAP_SYS_ADMIN: add CAP_NET_ADMIN)")
    } else {
        reason.to_owned()
    }
}

/// One sentence per missing optional capability: what will not be seen without it.
pub fn missing_optional(caps: Caps) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !caps.has(CAP_SYS_ADMIN) {
        out.push("without CAP_SYS_ADMIN the kernel refuses uprobes: no spans from TLS plaintext (OpenSSL, Go crypto/tls) and no goroutine links in Go programs");
    }
    if !caps.has(CAP_SYS_PTRACE) {
        out.push("without CAP_SYS_PTRACE other processes' /proc/PID/{maps,root,exe,environ} cannot be read: no TLS libraries found, stacks unsymbolized, service names from the process name only");
    }
    if !caps.has(CAP_DAC_READ_SEARCH) {
        out.push("without CAP_DAC_READ_SEARCH processes run by other users than ztrace's are described from their process name only (their /proc files and binaries are unreadable)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[u32]) -> Caps {
        Caps(list.iter().fold(0, |acc, c| acc | (1 << c)))
    }

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tztrace\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000000c000280004\n";
        let c = Caps::from_status(status).expect("CapEff");
        for cap in [
            CAP_DAC_READ_SEARCH,
            CAP_SYS_PTRACE,
            CAP_SYS_ADMIN,
            CAP_PERFMON,
            CAP_BPF,
        ] {
            assert!(c.has(cap), "{cap}");
        }
        assert!(!c.has(0));
        assert_eq!(Caps::from_status("Name:\tx\n"), None);
        assert_eq!(Caps::from_status("CapEff:\tzz\n"), None);
        assert!(Caps::current().is_some());
    }

    #[test]
    fn says_which_capability_is_missing() {
        let all = caps(&[
            CAP_BPF,
            CAP_PERFMON,
            CAP_SYS_ADMIN,
            CAP_SYS_PTRACE,
            CAP_DAC_READ_SEARCH,
        ]);
        assert_eq!(missing_required(all), None);
        assert!(missing_optional(all).is_empty());
        assert_eq!(missing_required(caps(&[CAP_SYS_ADMIN])), None);
        assert!(missing_required(caps(&[CAP_PERFMON])).is_some_and(|s| s.contains("CAP_BPF")));
        assert!(missing_required(caps(&[CAP_BPF])).is_some_and(|s| s.contains("CAP_PERFMON")));
        let without_admin = missing_optional(caps(&[
            CAP_BPF,
            CAP_PERFMON,
            CAP_SYS_PTRACE,
            CAP_DAC_READ_SEARCH,
        ]));
        assert_eq!(without_admin.len(), 1);
        assert!(without_admin[0].contains("CAP_SYS_ADMIN") && without_admin[0].contains("TLS"));
        assert_eq!(missing_optional(caps(&[CAP_SYS_ADMIN])).len(), 2);
    }
}
