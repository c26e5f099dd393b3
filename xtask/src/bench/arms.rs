//! One load measured three ways, alternating, [`PAIRS`] rounds: without ztrace, with its hooks
//! holding empty programs (`ztrace --empty-programs`: the floor of this way of hooking), and with
//! ztrace. Prints the table, the ratios (traced / untraced, floor / untraced, traced / floor),
//! the kernel's run time of the agent's programs per request and, for uprobes, the traps per
//! request, from `kernel.bpf_stats_enabled` over each run.

use super::*;

/// Which way a run was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arm {
    Off,
    Floor,
    On,
}

impl Arm {
    fn label(self) -> &'static str {
        match self {
            Arm::Off => "off",
            Arm::Floor => "floor",
            Arm::On => "on",
        }
    }
}

/// A kernel program's name, type (`bpftool`'s: `tracepoint`, `kprobe` for uprobes), run count
/// and run time (ns) over one run.
#[derive(Clone, Debug)]
pub(super) struct ProgramTime {
    pub name: String,
    pub kind: String,
    pub runs: u64,
    pub ns: u64,
}

/// One run of an arm.
pub(super) struct ArmRun {
    pub arm: Arm,
    pub run: Run,
    /// Requests the load completed (rate × seconds).
    pub requests: f64,
    /// The agent's programs over the run (floor and on).
    pub programs: Vec<ProgramTime>,
}

/// Runs `load` (returns requests per second over `seconds`) [`PAIRS`] times in each arm.
pub(super) fn three_arms(
    what: &str,
    ztrace: &Path,
    args: &[String],
    dir: &Path,
    seconds: f64,
    mut load: impl FnMut() -> Result<f64>,
) -> Result<Vec<ArmRun>> {
    let stats_were = bpf_stats_on();
    let mut floor_args = args.to_vec();
    floor_args.push("--empty-programs".to_owned());
    let mut runs = Vec::new();
    for pair in 1..=PAIRS {
        for arm in [Arm::Off, Arm::Floor, Arm::On] {
            say!(
                "{what} round {pair}/{PAIRS}: {}...",
                match arm {
                    Arm::Off => "without ztrace",
                    Arm::Floor => "ztrace's hooks with empty programs",
                    Arm::On => "with ztrace",
                }
            );
            let mut programs = Vec::new();
            let run = match arm {
                Arm::Off => Run {
                    requests_per_sec: load()?,
                    agent: None,
                },
                Arm::Floor | Arm::On => {
                    let args = if arm == Arm::Floor { &floor_args } else { args };
                    traced_run(ztrace, args, dir, |pid| {
                        let ids = agent_prog_ids(pid);
                        let before = prog_stats(&ids);
                        let rps = load()?;
                        programs = prog_delta(&before, &prog_stats(&ids));
                        Ok(rps)
                    })?
                }
            };
            say!("  {:.0} requests/s", run.requests_per_sec);
            runs.push(ArmRun {
                arm,
                requests: run.requests_per_sec * seconds,
                run,
                programs,
            });
        }
    }
    bpf_stats_restore(stats_were);
    Ok(runs)
}

/// The table and the ratios of [`three_arms`]' runs; `load` and the agent's command line say
/// how they were made.
pub(super) fn report_arms(runs: &[ArmRun], ztrace: &Path, agent_args: &[String], load: &str) {
    println!();
    println!(
        "{:<4} {:<6} {:>12} {:>12} {:>11} {:>12} {:>9} {:>9} {:>10} {:>9}",
        "run",
        "ztrace",
        "requests/s",
        "cpu s per s",
        "peak RSS",
        "events",
        "dropped",
        "µs/span",
        "BPF µs/req",
        "traps/req"
    );
    for (i, r) in runs.iter().enumerate() {
        let agent = r.run.agent.as_ref();
        let stats = agent.and_then(|a| a.stats.as_ref());
        let spans = stats.map_or(0, |s| counter(s, "spans_created"));
        let (bpf, traps) = per_request(&r.programs, r.requests);
        println!(
            "{:<4} {:<6} {:>12.0} {:>12} {:>11} {:>12} {:>9} {:>9} {:>10} {:>9}",
            i + 1,
            r.arm.label(),
            r.run.requests_per_sec,
            agent.map_or("-".into(), |a| format!("{:.3}", a.cpu_seconds_per_second)),
            agent
                .and_then(|a| a.peak_rss_kib)
                .map_or("-".into(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0)),
            stats.map_or("-".into(), |s| events_handled(s).to_string()),
            stats.map_or("-".into(), |s| events_dropped(s).to_string()),
            match agent {
                Some(a) if spans > 0 => format!("{:.2}", a.cpu_seconds * 1e6 / spans as f64),
                _ => "-".into(),
            },
            bpf.map_or("-".into(), |b| format!("{b:.2}")),
            traps.map_or("-".into(), |t| format!("{t:.1}")),
        );
    }
    let ratio = |num: Arm, den: Arm| {
        let ratios: Vec<f64> = runs
            .chunks(3)
            .filter_map(|round| {
                let of = |arm| {
                    round
                        .iter()
                        .find(|r| r.arm == arm)
                        .map(|r| r.run.requests_per_sec)
                };
                match (of(num), of(den)) {
                    (Some(n), Some(d)) if d > 0.0 => Some(n / d),
                    _ => None,
                }
            })
            .collect();
        median(&ratios)
    };
    if let (Some(on), Some(floor), Some(gap)) = (
        ratio(Arm::On, Arm::Off),
        ratio(Arm::Floor, Arm::Off),
        ratio(Arm::On, Arm::Floor),
    ) {
        println!("median throughput ratios: ztrace/untraced {on:.3}, floor/untraced {floor:.3}, ztrace/floor {gap:.3}");
    }
    let medians = |arm: Arm| {
        let per: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.arm == arm)
            .filter_map(|r| match per_request(&r.programs, r.requests) {
                (Some(b), t) => Some((b, t.unwrap_or(0.0))),
                _ => None,
            })
            .collect();
        (
            median(&per.iter().map(|p| p.0).collect::<Vec<_>>()),
            median(&per.iter().map(|p| p.1).collect::<Vec<_>>()),
        )
    };
    if let ((Some(on_bpf), on_traps), (Some(floor_bpf), _)) =
        (medians(Arm::On), medians(Arm::Floor))
    {
        println!(
            "kernel run time of the agent's programs per request (median, bpf_stats): {on_bpf:.2} µs with ztrace, {floor_bpf:.2} µs empty{}",
            on_traps.filter(|&t| t > 0.0).map_or(String::new(), |t| format!("; uprobe traps per request: {t:.1}"))
        );
    }
    if let Some(stats) = runs
        .iter()
        .rev()
        .find_map(|r| r.run.agent.as_ref()?.stats.as_ref())
        .filter(|_| runs.iter().any(|r| r.arm == Arm::On))
    {
        println!("last run's counters: {}", Value::Object(stats.clone()));
    }
    println!("load:   {load}");
    println!(
        "agent:  {} {} > /dev/null  (floor: the same with --empty-programs)",
        ztrace.display(),
        agent_args.join(" ")
    );
}

/// The programs of the last run with ztrace, for [`print_programs`].
pub(super) fn last_programs(runs: &[ArmRun]) -> Vec<ProgramTime> {
    runs.iter()
        .rev()
        .find(|r| r.arm == Arm::On)
        .map(|r| r.programs.clone())
        .unwrap_or_default()
}

/// (kernel µs of all programs per request, uprobe program runs per request), `None` without
/// programs or requests.
fn per_request(programs: &[ProgramTime], requests: f64) -> (Option<f64>, Option<f64>) {
    if programs.is_empty() || requests <= 0.0 {
        return (None, None);
    }
    let ns: u64 = programs.iter().map(|p| p.ns).sum();
    let traps: u64 = programs
        .iter()
        .filter(|p| p.kind == "kprobe")
        .map(|p| p.runs)
        .sum();
    (
        Some(ns as f64 / 1e3 / requests),
        Some(traps as f64 / requests),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(name: &str, kind: &str, runs: u64, ns: u64) -> ProgramTime {
        ProgramTime {
            name: name.into(),
            kind: kind.into(),
            runs,
            ns,
        }
    }

    #[test]
    fn per_request_figures() {
        let programs = [
            program("zt_exit_read", "tracepoint", 2000, 1_000_000),
            program("zt_ssl_read", "kprobe", 3000, 500_000),
            program("zt_ssl_ret", "kprobe", 3000, 500_000),
        ];
        let (bpf, traps) = per_request(&programs, 1000.0);
        assert_eq!(bpf, Some(2.0));
        assert_eq!(traps, Some(6.0));
        assert_eq!(per_request(&[], 1000.0), (None, None));
        assert_eq!(per_request(&programs, 0.0), (None, None));
    }
}
