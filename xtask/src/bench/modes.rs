//! `cargo xtask bench --modes` (and part of `cargo xtask bench`): the nginx load with ztrace in
//! each of its three ways of running, alternating with untraced runs: printing JSON
//! (`--no-ui --print=json`), exporting OTLP/HTTP (`--no-ui --otlp-endpoint ...`, to a receiver
//! in this process that reads each request and answers 200 without decoding it, so that the
//! receiver costs next to nothing) and the default (trace store and viewer). For each: the
//! throughput ratio and the agent's CPU per span. Then issue 14's no-loss load: 50,000 spans/s for
//! 60 s (`hey -q`) with ztrace exporting OTLP, and every drop counter.

use ztrace_e2e::backend::Backend;

use super::*;

/// Rounds of (untraced, then each mode).
const ROUNDS: usize = 2;

pub(super) fn modes_bench(ztrace: &Path) -> Result<()> {
    apt_install(&["nginx", "wrk"])?;
    let dir = TempDir::new("bench-modes");
    let nginx = bench_nginx(None);
    let url = format!("http://127.0.0.1:{}/index.html", nginx.port.unwrap_or(0));
    let receiver = Backend::start();
    let ui_port = free_port();
    let modes: [(&str, Vec<String>); 3] = [
        ("json", vec!["--no-ui".into(), "--print=json".into()]),
        (
            "otlp",
            vec![
                "--no-ui".into(),
                "--otlp-endpoint".into(),
                receiver.endpoint(),
                "--otlp-protocol".into(),
                "http/protobuf".into(),
            ],
        ),
        (
            "store",
            vec![
                "--ui".into(),
                format!("127.0.0.1:{ui_port}"),
                "--data-dir".into(),
                dir.join("store").display().to_string(),
            ],
        ),
    ];
    say!(
        "modes: nginx at {url}, OTLP/HTTP receiver at {}",
        receiver.endpoint()
    );
    wrk(&url, &["-t2", "-c32", "-d2s"])?;
    let mut rows: Vec<(&str, f64, Option<f64>, u64)> = Vec::new();
    for round in 1..=ROUNDS {
        say!("modes round {round}/{ROUNDS}: without ztrace...");
        let off = wrk(&url, WRK_ARGS)?;
        say!("  {off:.0} requests/s");
        rows.push(("off", off, None, 0));
        for (name, args) in &modes {
            say!("modes round {round}/{ROUNDS}: ztrace {}...", args.join(" "));
            let run = traced_run(ztrace, args, dir.path(), |_| wrk(&url, WRK_ARGS))?;
            say!("  {:.0} requests/s", run.requests_per_sec);
            let stats = run.agent.as_ref().and_then(|a| a.stats.as_ref());
            let spans = stats.map_or(0, |s| counter(s, "spans_created"));
            let per_span = run
                .agent
                .as_ref()
                .filter(|_| spans > 0)
                .map(|a| a.cpu_seconds * 1e6 / spans as f64);
            let lost = stats.map_or(0, events_dropped);
            rows.push((name, run.requests_per_sec, per_span, lost));
        }
    }
    println!();
    println!(
        "{:<6} {:>12} {:>9} {:>10} {:>9}",
        "mode", "requests/s", "ratio", "µs/span", "dropped"
    );
    let mut last_off = 0.0;
    for (name, rps, per_span, lost) in &rows {
        if *name == "off" {
            last_off = *rps;
        }
        println!(
            "{name:<6} {rps:>12.0} {:>9} {:>10} {:>9}",
            if *name == "off" || last_off <= 0.0 {
                "-".to_owned()
            } else {
                format!("{:.3}", rps / last_off)
            },
            per_span.map_or("-".to_owned(), |p| format!("{p:.2}")),
            if *name == "off" {
                "-".to_owned()
            } else {
                lost.to_string()
            },
        );
    }
    println!("load:   wrk {} {url} (nginx, both ends traced); ratio: to the untraced run of the same round", WRK_ARGS.join(" "));
    println!(
        "agent:  {} MODE ARGS > /dev/null, MODE ARGS one of:",
        ztrace.display()
    );
    for (name, args) in &modes {
        println!("  {name:<6} {}", args.join(" "));
    }
    println!(
        "OTLP receiver: {} export requests answered, {} bytes read",
        receiver.requests(),
        receiver.bytes()
    );
    sustained_otlp(ztrace, dir.path(), &url, &receiver)
}

/// Requests per second of the sustained run: 25 workers at 1,000 each, two spans per request.
const SUSTAINED_WORKERS: u32 = 25;
const SUSTAINED_QPS_PER_WORKER: u32 = 1_000;
const SUSTAINED_SECONDS: u32 = 60;

/// Issue 14's "no loss" load: 50,000 spans/s (25,000 requests/s, both ends traced) for 60 s, ztrace
/// exporting OTLP; prints the spans made and exported and every drop counter.
fn sustained_otlp(ztrace: &Path, dir: &Path, url: &str, receiver: &Backend) -> Result<()> {
    apt_install(&["hey"])?;
    let args: Vec<String> = vec![
        "--no-ui".into(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
        "--otlp-protocol".into(),
        "http/protobuf".into(),
    ];
    say!(
        "sustained: hey -z {SUSTAINED_SECONDS}s -c {SUSTAINED_WORKERS} -q {SUSTAINED_QPS_PER_WORKER} (up to {} requests/s) with ztrace exporting OTLP...",
        SUSTAINED_WORKERS * SUSTAINED_QPS_PER_WORKER
    );
    let run = traced_run(ztrace, &args, dir, |_| {
        let out = Command::new("hey")
            .args([
                "-z",
                &format!("{SUSTAINED_SECONDS}s"),
                "-c",
                &SUSTAINED_WORKERS.to_string(),
            ])
            .args(["-q", &SUSTAINED_QPS_PER_WORKER.to_string(), url])
            .output()
            .context("could not run hey")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "hey failed: {text}");
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:")?.trim().parse().ok())
            .with_context(|| format!("no Requests/sec in hey's output:\n{text}"))
    })?;
    let stats = run.agent.as_ref().and_then(|a| a.stats.as_ref());
    let spans = stats.map_or(0, |s| counter(s, "spans_created"));
    let exported = stats.map_or(0, |s| counter(s, "spans_exported"));
    let lost: Vec<String> = stats
        .map(|s| {
            s.iter()
                .filter(|(k, v)| {
                    (k.contains("dropped")
                        || k.contains("lost")
                        || k.ends_with("_full")
                        || k.contains("failed"))
                        && v.as_u64().unwrap_or(0) > 0
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    println!();
    println!(
        "sustained OTLP export: {:.0} requests/s for {SUSTAINED_SECONDS} s, {spans} spans made ({:.0}/s), {exported} exported, {}",
        run.requests_per_sec,
        spans as f64 / f64::from(SUSTAINED_SECONDS),
        if lost.is_empty() { "nothing dropped or lost".to_owned() } else { format!("losses: {}", lost.join(", ")) }
    );
    if let Some(agent) = &run.agent {
        println!(
            "  agent {:.3} CPU-s/s, peak RSS {}",
            agent.cpu_seconds_per_second,
            agent
                .peak_rss_kib
                .map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        );
    }
    println!("  load: hey -z {SUSTAINED_SECONDS}s -c {SUSTAINED_WORKERS} -q {SUSTAINED_QPS_PER_WORKER} {url}; agent: {} {}", ztrace.display(), args.join(" "));
    Ok(())
}
