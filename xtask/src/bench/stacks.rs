//! `cargo xtask bench --stacks`: what capturing and symbolizing client stacks costs.
//!
//! 1. wrk (a C client on keep-alive connections: each request's first write takes a stack,
//!    within the per-process budget) against nginx, alternating ztrace `--stacks=off` and
//!    `--stacks=on` (off-on, on-off, off-on), three pairs: the requests/s ratio on/off (target >= 0.95) and, from the
//!    `--stacks=on` runs' stats, the symbolizer's module cache hit rate.
//! 2. Large binaries making one GET each to nginx under one agent: chromium, node, the Go
//!    `kubectl` when present, and the Rust stack-test client (kubectl exits right after its
//!    request, often before the agent reads its maps: its stack may stay unsymbolized). For each, the first span's delay
//!    from the span's end to its line on the agent's stdout (the symbolizer loads the binary
//!    while the span waits), then the agent's RSS after all of them and its `symbol_bytes`.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::SystemTime;

use super::*;

const STACKS_WRK_ARGS: &[&str] = &["-t2", "-c32", "-d5s"];

pub(super) fn stacks_bench(ztrace: &Path) -> Result<()> {
    let dir = TempDir::new("bench-stacks");
    let nginx = bench_nginx(None);
    let port = nginx.port.unwrap_or(0);
    let url = format!("http://127.0.0.1:{port}/index.html");
    wrk(&url, &["-t2", "-c32", "-d2s"])?;

    let args = |stacks: &str| {
        ["--no-ui", "--print=json", stacks]
            .map(String::from)
            .to_vec()
    };
    let (mut off, mut on, mut hits, mut misses) = (Vec::new(), Vec::new(), 0, 0);
    for pair in 1..=PAIRS {
        // Alternating and in turn first: off-on, on-off, off-on.
        let order = if pair % 2 == 1 {
            ["--stacks=off", "--stacks=on"]
        } else {
            ["--stacks=on", "--stacks=off"]
        };
        for stacks in order {
            let runs = if stacks.ends_with("on") {
                &mut on
            } else {
                &mut off
            };
            let run = traced_run(ztrace, &args(stacks), dir.path(), |_| {
                wrk(&url, STACKS_WRK_ARGS)
            })?;
            say!(
                "pair {pair}/{PAIRS} {stacks}: {:.0} requests/s",
                run.requests_per_sec
            );
            if let Some(agent) = &run.agent {
                let stats = agent.stats.clone().unwrap_or_default();
                say!(
                    "  agent {:.3} cpu s/s, {} events handled, {} dropped",
                    agent.cpu_seconds_per_second,
                    events_handled(&stats),
                    events_dropped(&stats)
                );
            }
            if let Some(stats) = run.agent.as_ref().and_then(|a| a.stats.as_ref()) {
                if stacks.ends_with("on") {
                    hits += counter(stats, "symbol_cache_hits");
                    misses += counter(stats, "symbol_cache_misses");
                    say!(
                        "  kernel_stack_events {}, kernel_stack_budget_skipped {}, stacks_attached {}",
                        counter(stats, "kernel_stack_events"),
                        counter(stats, "kernel_stack_budget_skipped"),
                        counter(stats, "stacks_attached")
                    );
                }
            }
            runs.push(run.requests_per_sec);
        }
    }
    let (m_off, m_on) = (median(&off).unwrap_or(0.0), median(&on).unwrap_or(0.0));
    println!();
    println!("stacks: wrk {} {url} (nginx), ztrace --no-ui --print=json --stacks=off|on, {PAIRS} alternating pairs", STACKS_WRK_ARGS.join(" "));
    println!("  requests/s median: stacks off {m_off:.0}, on {m_on:.0}; ratio on/off {:.3} (target >= 0.95)", m_on / m_off.max(1.0));
    let lookups = hits + misses;
    println!(
        "  symbolizer module cache: {hits} hits, {misses} misses, hit rate {:.4}",
        hits as f64 / (lookups.max(1)) as f64
    );

    large_binaries(ztrace, dir.path(), port)?;
    drop(nginx);
    Ok(())
}

/// A client command making one GET to `url`, when its binary is on this machine.
fn clients(dir: &Path, url: &str) -> Vec<(PathBuf, Command)> {
    let mut out = Vec::new();
    let chromium = PathBuf::from("/usr/lib/chromium/chromium");
    if chromium.exists() {
        let mut c = Command::new(&chromium);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .arg(url);
        out.push((chromium, c));
    }
    let node = PathBuf::from("/usr/bin/node");
    if node.exists() {
        let mut c = Command::new(&node);
        // Alive a moment after its request: the agent reads the process's maps after the write.
        c.args([
            "-e",
            &format!(
                "require('http').get('{url}', r => {{ r.resume(); setTimeout(() => {{}}, 500); }})"
            ),
        ]);
        out.push((node, c));
    }
    let kubectl = PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl");
    if kubectl.exists() {
        let mut c = Command::new(&kubectl);
        let base = url.trim_end_matches("/index.html");
        c.args(["--server", base, "get", "--raw", "/index.html"]);
        out.push((kubectl, c));
    }
    let source = util::repo_root().join("tests/fixtures/stack_client.rs");
    let rust = dir.join("stack_client_rs");
    let built = Command::new("rustc")
        .args([
            "--edition",
            "2021",
            "-C",
            "opt-level=3",
            "-C",
            "debuginfo=2",
            "--crate-name",
            "stack_client",
            "-o",
        ])
        .arg(&rust)
        .arg(&source)
        .status();
    if built.is_ok_and(|s| s.success()) {
        let port = url
            .split(':')
            .nth(2)
            .and_then(|p| p.split('/').next())
            .unwrap_or("0")
            .to_owned();
        let mut c = Command::new(&rust);
        c.arg(port);
        out.push((rust, c));
    }
    out
}

fn large_binaries(ztrace: &Path, dir: &Path, port: u16) -> Result<()> {
    let url = format!("http://127.0.0.1:{port}/index.html");
    let stderr_path = dir.join("ztrace-large.stderr");
    let mut agent = Guard(
        Command::new(ztrace)
            .args(["--no-ui", "--print=json", "--stacks=on"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .with_context(|| format!("could not start {}", ztrace.display()))?,
    );
    let pid = agent.0.id();
    let stdout = agent.0.stdout.take().context("agent stdout")?;
    let (tx, lines) = mpsc::channel::<(u128, Value)>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send((now, v)).is_err() {
                    break;
                }
            }
        }
    });
    wait_for_line(
        &mut agent.0,
        &stderr_path,
        READY_LINE,
        Duration::from_secs(60),
    )?;

    println!();
    println!("stacks: the first span of large binaries (one GET each to {url}; ztrace --no-ui --print=json --stacks=on)");
    println!(
        "  {:<46} {:>10} {:>18}  innermost application frame",
        "binary", "size", "span end → printed"
    );
    for (binary, mut cmd) in clients(dir, &url) {
        let size = std::fs::metadata(&binary).map_or(0, |m| m.len());
        let exe = binary.display().to_string();
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        let Ok(mut child) = child else {
            say!("  {exe}: could not start; skipped");
            continue;
        };
        let client_pid = u64::from(child.id());
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = None;
        while found.is_none() && Instant::now() < deadline {
            let Ok((at, span)) = lines.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            // chromium's request comes from a child process; the others make it themselves.
            let same_exe = span["resource"]["process.executable.path"].as_str()
                == Some(exe.as_str())
                || span["resource"]["process.pid"].as_u64() == Some(client_pid);
            let to_nginx = span["attributes"]["server.port"].as_u64() == Some(u64::from(port));
            if same_exe && to_nginx && span["kind"] == "client" {
                found = Some((at, span));
            }
        }
        match found {
            Some((at, span)) => {
                let end = span["end_unix_nano"].as_u64().unwrap_or(0) as u128;
                let delay_ms = at.saturating_sub(end) as f64 / 1e6;
                let frame = span["attributes"]["code.function.name"]
                    .as_str()
                    .unwrap_or("-")
                    .to_owned();
                println!(
                    "  {exe:<46} {:>7.1} MB {delay_ms:>15.1} ms  {frame}",
                    size as f64 / 1e6
                );
            }
            None => println!(
                "  {exe:<46} {:>7.1} MB {:>18}  -",
                size as f64 / 1e6,
                "no span in 10 s"
            ),
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map_or("?".into(), |v| v.trim().to_owned());
    // SAFETY: kill(2) on the pid of a child we have not reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let _ = wait_timeout(&mut agent.0, Duration::from_secs(30))?;
    let stats =
        stats_line(&std::fs::read_to_string(&stderr_path).unwrap_or_default()).unwrap_or_default();
    println!(
        "  agent after them: VmRSS {rss}, VmHWM {} KiB; symbol_bytes {:.1} MB ({} cache misses, {} load errors)",
        vm_hwm_kib(&status).unwrap_or(0),
        counter(&stats, "symbol_bytes") as f64 / 1e6,
        counter(&stats, "symbol_cache_misses"),
        counter(&stats, "symbol_load_errors")
    );
    Ok(())
}
