//! The one place where the stages meet: kernel events → connections → exchanges → spans → sinks.
//!
//! [`run`] starts the stages in order — the health endpoint, the sinks, the kernel programs, TLS and
//! Go discovery, the symbolizer, the capture task ([`capture`]) and the viewer — then runs the event loop until
//! SIGINT or SIGTERM, and stops them in reverse. It does no protocol, span or sink work itself.

mod capture;
#[cfg(test)]
mod replay_bench;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::signal::unix::SignalKind;

use crate::{
    bpf::{self, attach, BpfError, EventRing, Selection, StackCapture},
    config::Config,
    discovery::{cri::PodSource, go::GoDiscovery},
    metrics::Metrics,
    sinks::{SinkError, Sinks},
    symbols::{self, join::StackJoin, SymbolizerConfig},
    tls::{self, TlsDiscovery},
    ui,
};
use capture::{Capture, STACK_WAIT};

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("reading kernel events: {0}")]
    Io(#[from] std::io::Error),
    #[error("--capture-bytes must be between 64 and {max}", max = ztrace_common::MAX_CAPTURE)]
    CaptureBytes,
    #[error("--stack-bytes must be at most {max}", max = ztrace_common::MAX_STACK_BYTES)]
    StackBytes,
    #[error("--ring-buffer-mib must be a power of two from 1 to 256, not {0}")]
    RingBufferMib(u32),
}

/// Whether `mib` is a ring-buffer size the kernel takes (a power-of-two number of pages) and
/// within reason.
pub fn ring_buffer_mib_ok(mib: u32) -> bool {
    mib.is_power_of_two() && mib <= 256
}

/// How often the ring buffer is drained when the kernel does not wake the agent.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How often the kernel's maps keyed by process are swept of exited processes, and the fill
/// levels of the kernel's hash maps and the agent's tables counted for `/metrics` (walking a
/// full 65,536-entry map takes ~65 ms).
pub const FILL_INTERVAL: Duration = Duration::from_secs(10);
/// How often the processes of probed TLS files are checked (see `TlsDiscovery::reap`).
const TLS_REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), PipelineError> {
    if !(64..=ztrace_common::MAX_CAPTURE).contains(&config.capture_bytes) {
        return Err(PipelineError::CaptureBytes);
    }
    if config.stack_bytes > ztrace_common::MAX_STACK_BYTES {
        return Err(PipelineError::StackBytes);
    }
    if !ring_buffer_mib_ok(config.ring_buffer_mib) {
        return Err(PipelineError::RingBufferMib(config.ring_buffer_mib));
    }
    let stacks_on = config.stacks == "on";
    bpf::check_can_start()?;
    let metrics = Arc::new(Metrics::default());
    let health = crate::health::start_if(config.health, &metrics).await;
    // Print, OTLP export and the store (unless --no-ui); a store that cannot open is logged.
    let mut sinks = Sinks::open(&config, &metrics)?;
    let viewer = if config.no_ui {
        None
    } else {
        ui::start(
            &config,
            metrics.clone(),
            sinks.store_dir.as_deref(),
            sinks.store_status.clone(),
        )
        .await
    };

    let selection = Selection {
        pids: config.pids.clone(),
        exe_names: config.exe_names.clone(),
        cgroup: config.cgroup.clone(),
    };
    let stack_capture = StackCapture {
        enabled: stacks_on,
        stack_bytes: config.stack_bytes,
        per_second: config.stacks_per_second,
        burst: config.stacks_per_second.saturating_mul(2),
    };
    let (mut probes, ring) = bpf::start(
        config.capture_bytes,
        config.ring_buffer_mib << 20,
        &selection,
        stack_capture,
        config.empty_programs,
        match config.propagate.as_str() {
            "off" => ztrace_common::propagate::OFF,
            "all" => ztrace_common::propagate::ALL,
            _ => ztrace_common::propagate::ON,
        },
    )?;
    eprintln!("{}", attach::render(&probes.attached));
    eprintln!("{}", probes.propagation.line());
    eprintln!("{}", probes.injection.line());
    probes.check_required()?;
    let mut tls = TlsDiscovery::new(std::process::id());
    tls.scan_at_start(&mut probes);
    eprintln!("{}", tls::render(&tls.rows));

    // Go programs already running: follow their goroutines from the first request on.
    let mut go = GoDiscovery::new(stacks_on);
    for row in go.scan_at_start(std::process::id(), &mut probes) {
        eprintln!("  {}", row.line);
    }
    let symbolizer = stacks_on.then(|| {
        let mut debug_dirs = config.debug_dirs.clone();
        debug_dirs.push("/usr/lib/debug".into());
        let max_bytes = usize::try_from(config.symbol_cache_size).unwrap_or(usize::MAX);
        symbols::spawn(
            SymbolizerConfig {
                debug_dirs,
                max_bytes,
            },
            metrics.clone(),
        )
    });
    let mut capture = Capture::new(
        metrics.clone(),
        config.db_query_parameters,
        tls,
        StackJoin::new(symbolizer, STACK_WAIT),
        go,
    );
    // Whoever reads the viewer (a browser polling /api/traces) or the health endpoint is not traced.
    for addr in viewer.into_iter().chain(health.as_ref().map(|h| h.1)) {
        capture.ignore_clients_of(addr);
    }
    capture.set_node_name(config.k8s_node_name.clone());
    capture.set_pod_source(PodSource::from_option(config.cri_socket.as_deref()));
    let mut ring = EventRing::new(ring)?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_reap = Instant::now();
    let mut last_fill: Option<Instant> = None;
    // The kernel wakes the agent only when a backlog builds up; otherwise it is polled.
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Some(addr) = viewer {
        eprintln!("viewer: http://{addr}");
    }
    eprintln!("ztrace is ready");
    health.as_ref().inspect(|h| h.0.set_ready());
    tracing::info!("{}", selection.describe());

    loop {
        tokio::select! {
            guard = ring.readable() => {
                let mut guard = guard?;
                // Clear first: records written while draining wake the next round.
                guard.clear_ready();
                capture.drain(guard.get_inner_mut(), &mut sinks);
            }
            _ = poll.tick() => capture.drain(ring.ring_mut(), &mut sinks),
            _ = tick.tick() => capture.housekeeping(&mut sinks),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        // New programs and processes: probe their TLS libraries (once per file).
        if capture.tls.has_pending() {
            for row in capture.tls.run_pending(&mut probes) {
                tracing::info!("tls: {row} (found in pid {})", row.pid);
            }
        }
        // Files whose processes all exited: their probes go.
        if last_reap.elapsed() >= TLS_REAP_INTERVAL {
            last_reap = Instant::now();
            for line in capture
                .tls
                .reap(&mut probes, last_reap, config.tls_detach_after)
            {
                tracing::info!("tls: {line}");
            }
            // Exited Go programs stop being followed (their pid may be reused).
            capture.go.reap(&mut probes);
            health
                .as_ref()
                .inspect(|h| h.0.set_kernel(probes.kernel_counters()));
            health
                .as_ref()
                .inspect(|h| h.0.set_queues(sinks.queue_depths()));
            if last_fill.is_none_or(|t| t.elapsed() >= FILL_INTERVAL) {
                last_fill = Some(Instant::now());
                // Exited processes' entries go, so that churn cannot fill the maps.
                Metrics::add(&metrics.kernel_entries_swept, probes.sweep_exited());
                capture.tls.forget_exited();
                capture.go.forget_exited();
                if let Some((health, _)) = &health {
                    health.set_levels(levels(&probes, &capture));
                }
            }
        }
        // Interpreters: their stacks name no application code, the kernel takes none.
        for tgid in capture.take_stackless() {
            probes.skip_stacks(tgid);
        }
        // ... and whether they are Go programs, whose goroutines are followed.
        if capture.go.has_pending() {
            for row in capture.go.run_pending(&mut probes) {
                tracing::info!("go: {} (found in pid {})", row.line, row.pid);
            }
        }
    }

    // Stop: take what the kernel already wrote, then flush the sinks.
    for _ in 0..64 {
        capture.drain(ring.ring_mut(), &mut sinks);
    }
    capture.flush(&mut sinks);
    let kernel = probes.kernel_counters();
    let fill = levels(&probes, &capture);
    probes.release_in_background();
    sinks.finish().await;
    let mut stats = metrics.stats_json(&kernel);
    if let (Some(stats), serde_json::Value::Object(fill)) = (stats.as_object_mut(), fill.to_json())
    {
        stats.extend(fill);
    }
    eprintln!("ztrace stats: {stats}");
    Ok(())
}

/// How full the kernel's hash maps and the agent's tables are now.
fn levels(probes: &bpf::Probes, capture: &Capture) -> crate::health::Levels {
    crate::health::Levels {
        maps: probes.map_fill(),
        tables: capture.table_sizes(),
    }
}

#[cfg(test)]
mod tests {
    use super::ring_buffer_mib_ok;

    #[test]
    fn ring_buffer_sizes_are_powers_of_two_up_to_256_mib() {
        for ok in [1, 2, 8, 16, 256] {
            assert!(ring_buffer_mib_ok(ok), "{ok}");
        }
        for bad in [0, 3, 12, 512, u32::MAX] {
            assert!(!ring_buffer_mib_ok(bad), "{bad}");
        }
    }
}
