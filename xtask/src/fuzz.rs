//! Fuzzing the protocol parsers: every target of `agent/fuzz/fuzz_targets/` (cargo-fuzz,
//! libFuzzer, on the nightly toolchain the eBPF build already installs) runs
//! [`TEST_SECONDS`] in `cargo xtask test` and [`BENCH_SECONDS`] in `cargo xtask bench --fuzz`.
//! A target passes when libFuzzer ends its time without a crash (a panic, an out-of-bounds access,
//! or more than 2 GiB of memory); a crash leaves its input under `agent/fuzz/artifacts/TARGET/`.
//! Each run starts from the committed seed corpus `agent/fuzz/seeds/TARGET/` (inputs that
//! reach each parser's states, kept small with `cargo fuzz cmin`) and grows its own under
//! `target/fuzz-corpus/TARGET/` for the next run. `ZTRACE_FUZZ_TARGETS=a,b` runs only those.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::toolchain;
use crate::util::{self, say};

/// Seconds each target runs in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 20;
/// Seconds each target runs in `cargo xtask bench --fuzz`.
pub const BENCH_SECONDS: u64 = 3600;

/// One target's outcome.
pub struct Outcome {
    pub target: String,
    pub passed: bool,
    /// libFuzzer's closing line (`Done N runs in S second(s)`) or what went wrong.
    pub summary: String,
}

/// The fuzz targets, by name (`fuzz_targets/NAME.rs`).
pub fn targets() -> Result<Vec<String>> {
    let dir = util::repo_root().join("agent/fuzz/fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter_map(|e| e.path().file_stem()?.to_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// Installs cargo-fuzz when it is missing.
fn ensure_cargo_fuzz() -> Result<()> {
    if util::output_of(util::cargo().args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    say!("installing cargo-fuzz (cargo install --locked)...");
    util::run(util::cargo().args(["install", "cargo-fuzz", "--locked"]))
}

/// The targets to run: all of them, or those `ZTRACE_FUZZ_TARGETS` names (comma-separated), so
/// that `bench --fuzz`'s hours can be spread over several runs.
fn chosen_targets() -> Result<Vec<String>> {
    let all = targets()?;
    let Ok(wanted) = std::env::var("ZTRACE_FUZZ_TARGETS") else {
        return Ok(all);
    };
    let wanted: Vec<String> = wanted
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(unknown) = wanted.iter().find(|t| !all.contains(t)) {
        anyhow::bail!("ZTRACE_FUZZ_TARGETS names {unknown}, which is not a fuzz target: {all:?}");
    }
    Ok(wanted)
}

/// Runs every chosen target for `seconds_each` seconds.
pub fn run_all(seconds_each: u64) -> Result<Vec<Outcome>> {
    ensure_cargo_fuzz()?;
    let channel = toolchain::ebpf_channel();
    let mut outcomes = Vec::new();
    for target in chosen_targets()? {
        let corpus: PathBuf = util::target_dir().join("fuzz-corpus").join(&target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = util::repo_root().join("agent/fuzz/seeds").join(&target);
        say!("fuzzing {target} for {seconds_each} s...");
        let started = Instant::now();
        let mut cmd = Command::new("rustup");
        cmd.current_dir(util::repo_root().join("agent"))
            .args(["run", &channel, "cargo", "fuzz", "run", &target])
            .arg(&corpus);
        // libFuzzer reads every directory given and writes new inputs to the first only.
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.args([
            "--",
            &format!("-max_total_time={seconds_each}"),
            "-rss_limit_mb=2048",
            "-print_final_stats=0",
        ]);
        say!("$ {}", util::display(&cmd));
        let out = cmd
            .output()
            .with_context(|| format!("could not run cargo fuzz for {target}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let summary = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("Done ") || l.contains("ERROR") || l.contains("panicked"))
            .unwrap_or("no summary line")
            .to_owned();
        let passed = out.status.success();
        if !passed {
            say!(
                "fuzz target {target} FAILED after {:.0} s: {summary}\n{}",
                started.elapsed().as_secs_f64(),
                ztrace_e2e::tail(&stderr, 30)
            );
        } else {
            say!("fuzz target {target}: ok, {summary}");
        }
        outcomes.push(Outcome {
            target,
            passed,
            summary,
        });
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_protocol_has_a_target() {
        let targets = super::targets().expect("fuzz_targets/ is readable");
        for protocol in ["http1", "postgres", "redis", "memcached", "nats"] {
            assert!(
                targets.iter().any(|t| t == protocol),
                "no fuzz target for {protocol}: {targets:?}"
            );
        }
    }
}
