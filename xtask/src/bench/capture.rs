//! `cargo xtask bench --capture`: the agent's own instructions per span, counted by callgrind.
//!
//! The agent library's `pipeline::replay_bench::capture_replay` test replays kernel records of
//! keep-alive HTTP/1 exchanges seen at both ends (decoding, connection table, parser, span
//! building, trace assembly, the `--print=json` encoding; one thread, no kernel). It runs under
//! `valgrind --tool=callgrind` with N and with 2N exchanges; the difference in instructions over
//! the difference in spans is the cost of one span, without start-up. Instructions do not change
//! with the machine's load, unlike time, so this figure compares builds on a busy machine.

use std::path::PathBuf;

use super::*;

/// Exchanges of the shorter replay (the longer has twice as many); each gives two spans.
const EXCHANGES: u64 = 5_000;

pub(super) fn capture_bench() -> Result<()> {
    apt_install(&["valgrind"])?;
    say!("the capture path replayed under callgrind ({EXCHANGES} and {} HTTP/1 exchanges, client and server ends)...", 2 * EXCHANGES);
    let test_binary = lib_test_binary()?;
    let dir = TempDir::new("bench-capture");
    let mut counts = Vec::new();
    for exchanges in [EXCHANGES, 2 * EXCHANGES] {
        let out = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!(
                "--callgrind-out-file={}",
                dir.join(&format!("callgrind.{exchanges}")).display()
            ))
            .arg(&test_binary)
            .args([
                "--ignored",
                "--exact",
                "pipeline::replay_bench::capture_replay",
                "--test-threads=1",
            ])
            .env("ZTRACE_BENCH_EXCHANGES", exchanges.to_string())
            .output()
            .context("could not run valgrind")?;
        ensure!(
            out.status.success(),
            "the replay failed under callgrind: {}",
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        );
        let collected = collected(&String::from_utf8_lossy(&out.stderr))
            .context("callgrind printed no `Collected :` line")?;
        counts.push(collected);
    }
    let per_span = (counts[1].saturating_sub(counts[0])) as f64 / (2 * EXCHANGES) as f64;
    println!("capture path, instructions per span (callgrind, {} - {} instructions over {} spans): {per_span:.0}", counts[1], counts[0], 2 * EXCHANGES);
    Ok(())
}

/// The agent library's test executable, built in release.
fn lib_test_binary() -> Result<PathBuf> {
    let out = util::cargo()
        .current_dir(util::repo_root())
        .args([
            "test",
            "--release",
            "-p",
            "ztrace",
            "--lib",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("could not build the agent's tests")?;
    ensure!(out.status.success(), "building the agent's tests failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| {
            v["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "lib"))
        })
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo named no test executable for the agent's library")
}

/// `==123== Collected : 384723307` → 384723307.
fn collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        l.split_once("Collected :")
            .and_then(|(_, n)| n.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn callgrinds_total_is_read() {
        let stderr = "==6031== Events    : Ir\n==6031== Collected : 384723307\n==6031==\n==6031== I   refs:      384,723,307\n";
        assert_eq!(super::collected(stderr), Some(384_723_307));
        assert_eq!(super::collected("nothing"), None);
    }
}
