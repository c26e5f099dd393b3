//! Why the kernel refused a program, in one line a user can act on.
//!
//! When `BPF_PROG_LOAD` fails, aya hands back the whole verifier log: thousands of lines of the
//! path the verifier walked. Its first line is often harmless (Linux 6.1 prints `reg type
//! unsupported for arg#0 function ...` for every program); what decides is the last error line
//! and the instruction it stopped at. [`load_failure`] keeps those two for the attach table and
//! logs the whole log at debug level, and [`kernel_release`] reads the running kernel's version
//! for the "too old" sentence.

use aya::programs::ProgramError;

/// Lines the verifier prints after its verdict (statistics), which are never the reason.
const STATS_PREFIXES: &[&str] = &[
    "verification time",
    "stack depth",
    "processed ",
    "max_states_per_insn",
    "mark_read",
];

/// One line for the attach table saying why `program` did not load, or any other program error
/// as a chain of causes. The whole verifier log goes to the debug log.
pub fn load_failure(program: &str, error: &ProgramError) -> String {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            tracing::debug!(program, verifier_log = %log, "the kernel's verifier refused a program");
            match summarize(&log) {
                Some(reason) => format!("{io_error}; verifier: {reason}"),
                None => io_error.to_string(),
            }
        }
        other => super::error_chain(other),
    }
}

/// The deciding lines of a verifier log: its last error line and, when the log has one, the
/// instruction before it (`R1 type=scalar expected=fp, ... at 2813: (85) call
/// bpf_probe_read_user#112`).
pub fn summarize(log: &str) -> Option<String> {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !STATS_PREFIXES.iter().any(|p| l.starts_with(p)))
        .collect();
    let (last, before) = lines.split_last()?;
    let reason = last.trim_start_matches(": ").trim();
    if reason.is_empty() {
        return None;
    }
    let instruction = before.iter().rev().find(|l| is_instruction(l));
    Some(match instruction {
        Some(insn) => format!("{reason} at {}", strip_state(insn)),
        None => reason.to_owned(),
    })
}

/// `2813: (85) call bpf_probe_read_user#112` and the like: an instruction the verifier walked.
fn is_instruction(line: &str) -> bool {
    let Some((index, rest)) = line.split_once(':') else {
        return false;
    };
    !index.is_empty()
        && index.bytes().all(|b| b.is_ascii_digit())
        && rest.trim_start().starts_with('(')
}

/// An instruction line without the register state the verifier appends after `;`.
fn strip_state(line: &str) -> &str {
    match line.find(" ; ") {
        Some(at) => line[..at].trim_end(),
        None => line.trim_end(),
    }
}

/// The running kernel's release (`6.1.0-50-cloud-amd64`) and its (major, minor).
pub fn kernel_release() -> Option<(String, (u32, u32))> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()?
        .trim()
        .to_owned();
    let version = parse_version(&release)?;
    Some((release, version))
}

/// `5.10.0-46-cloud-amd64` → (5, 10).
pub fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a real log: Linux 6.1 refusing `zt_exit_read` before the fix.
    const LINUX_6_1: &str = "reg type unsupported for arg#0 function zt_exit_read#51
0: R1=ctx(off=0,imm=0) R10=fp0
; pub fn $exit(ctx: TracePointContext) -> u32 {
0: (bf) r7 = r1                       ; R1=ctx(off=0,imm=0) R7_w=ctx(off=0,imm=0)
; fun(dst, size, unsafe_ptr)
2811: (bf) r1 = r4                    ; R1_w=scalar(id=145) R4_w=scalar(id=145)
2812: (b7) r2 = 64                    ; R2_w=64
2813: (85) call bpf_probe_read_user#112
R1 type=scalar expected=fp, pkt, pkt_meta, map_key, map_value, mem, alloc_mem, buf
verification time 49611 usec
stack depth 296+0
processed 2941 insns (limit 1000000) max_states_per_insn 8 total_states 184 peak_states 160 mark_read 41
";

    #[test]
    fn the_deciding_line_is_the_last_error_and_its_instruction() {
        assert_eq!(
            summarize(LINUX_6_1).as_deref(),
            Some("R1 type=scalar expected=fp, pkt, pkt_meta, map_key, map_value, mem, alloc_mem, buf at 2813: (85) call bpf_probe_read_user#112")
        );
    }

    #[test]
    fn linux_6_12s_unbounded_access_and_5_10s_unknown_helper() {
        let log = "2359: (79) r3 = *(u64 *)(r10 -208)    ; R3_w=scalar(id=26,umin=1) R10=fp0\n\
                   2360: (85) call bpf_probe_read_user#112\n\
                   R2 unbounded memory access, use 'var &= const' or 'if (var < const)'\n\
                   processed 2400 insns (limit 1000000)\n";
        assert_eq!(
            summarize(log).as_deref(),
            Some("R2 unbounded memory access, use 'var &= const' or 'if (var < const)' at 2360: (85) call bpf_probe_read_user#112")
        );
        let log = "arg#0 type is not a struct\nUnrecognized arg#0 type PTR\n; fun()\n17: (85) call unknown#158\ninvalid func unknown#158\n";
        assert_eq!(
            summarize(log).as_deref(),
            Some("invalid func unknown#158 at 17: (85) call unknown#158")
        );
    }

    #[test]
    fn an_instruction_keeps_its_text_without_the_register_state() {
        assert_eq!(
            strip_state("453: (1d) if r1 == r4 goto pc+94 ; R1=0"),
            "453: (1d) if r1 == r4 goto pc+94"
        );
        assert!(is_instruction("2813: (85) call bpf_probe_read_user#112"));
        assert!(!is_instruction("R1 type=scalar expected=fp"));
        assert!(!is_instruction("; fun(dst, size, unsafe_ptr)"));
    }

    #[test]
    fn an_empty_log_has_no_summary() {
        assert_eq!(summarize(""), None);
        assert_eq!(summarize("processed 0 insns\n"), None);
    }

    #[test]
    fn kernel_versions_parse_from_releases() {
        assert_eq!(parse_version("5.10.0-46-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_version("6.12.95+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(parse_version("6.18.44-fc-v1300"), Some((6, 18)));
        assert_eq!(parse_version("garbage"), None);
    }
}
