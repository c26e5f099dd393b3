//! The kernel matrix: ztrace on the kernels users run, each booted in qemu.
//!
//! `cargo xtask test` prepares a Debian 12 root filesystem and Debian's own kernels under
//! `target/kernel-matrix/` (see `xtask/src/kernels.rs`) and names it in `ZTRACE_KERNEL_MATRIX`.
//! Here that tree gets this build's ztrace and real programs, becomes a disk image, and every
//! kernel boots it at once (TCG: `/dev/kvm` cannot boot stock kernels on these machines). The
//! guest's init (`tests/fixtures/kernel_matrix/init.sh`) starts ztrace, sends plain HTTP
//! (python's http.server, curl), HTTPS through OpenSSL (python's ssl, curl), Go crypto/tls on
//! both ends, and a C client without frame pointers for a stack, stops ztrace and writes its
//! log and spans to the second serial port.
//!
//! Per kernel: on 6.1 and 6.12 every program of the attach table and every uprobe loads, and
//! the spans are right and linked; 5.10 is refused at once in one sentence. The host's own
//! kernel is what every other end-to-end test runs on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ztrace_e2e::{checks, clients, fixture, tail, tls, Span, TempDir};

/// How long one guest may take from boot to power-off (it needs 30-90 s on a quiet machine).
const GUEST_TIMEOUT: Duration = Duration::from_secs(480);

/// What one guest reported.
#[derive(Debug, Default)]
struct Guest {
    /// `@@ key value` lines of init.sh.
    status: HashMap<String, String>,
    /// ztrace's stderr: the attach table, TLS rows, logs, the stats line.
    log: String,
    spans: Vec<Span>,
    /// The kernel's console, for failure messages.
    console: String,
}

impl Guest {
    fn status(&self, key: &str) -> Option<&str> {
        self.status.get(key).map(String::as_str)
    }

    fn describe(&self) -> String {
        format!(
            "status: {:?}\nztrace's log (end):\n{}\nconsole (end):\n{}",
            self.status,
            tail(&self.log, 40),
            tail(&self.console, 25)
        )
    }

    /// The span of `kind` whose `url.path` is `path`.
    fn span(&self, kind: &str, path: &str) -> &Span {
        self.spans
            .iter()
            .find(|s| s.kind() == Some(kind) && s.attr_str("url.path") == Some(path))
            .unwrap_or_else(|| {
                panic!(
                    "no {kind} span for {path} among {} spans:\n{:#?}\n{}",
                    self.spans.len(),
                    self.spans,
                    self.describe()
                )
            })
    }
}

/// The matrix's directory, as `cargo xtask test` prepared it.
fn matrix_dir() -> PathBuf {
    let dir = std::env::var_os("ZTRACE_KERNEL_MATRIX").filter(|d| !d.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
        panic!("ZTRACE_KERNEL_MATRIX is not set: run the kernel matrix through `cargo xtask test` (or `cargo xtask kernel-matrix` first)")
    });
    assert!(
        dir.join("ready").is_file(),
        "{} is not a complete kernel matrix: run `cargo xtask kernel-matrix`",
        dir.display()
    );
    dir
}

/// Every kernel's guest, booted together the first time a test asks.
fn guests() -> &'static HashMap<String, Guest> {
    static GUESTS: OnceLock<HashMap<String, Guest>> = OnceLock::new();
    GUESTS.get_or_init(boot_all)
}

/// The guest of the kernel whose release starts with `series` (`"6.1."`).
fn guest(series: &str) -> &'static Guest {
    let guests = guests();
    guests.get(series).unwrap_or_else(|| {
        panic!(
            "no Linux {series}x kernel in the matrix (found {:?})",
            guests.keys().collect::<Vec<_>>()
        )
    })
}

fn boot_all() -> HashMap<String, Guest> {
    let matrix = matrix_dir();
    let work = TempDir::new("kernels");
    let image = make_image(&matrix.join("rootfs"), work.path());
    let mut kernels: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(matrix.join("kernels")).expect("read the matrix's kernels") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            let initrd = matrix.join("kernels").join(format!("initrd.img-{release}"));
            assert!(initrd.is_file(), "{} has no initrd", path.display());
            let series = release.split('.').take(2).collect::<Vec<_>>().join(".") + ".";
            kernels.push((series, path.clone(), initrd));
        }
    }
    assert!(!kernels.is_empty(), "no kernels in {}", matrix.display());
    let runs: Vec<_> = kernels
        .into_iter()
        .map(|(series, kernel, initrd)| {
            let out = work.join(&format!("out-{series}"));
            std::fs::create_dir_all(&out).expect("create the guest's output dir");
            let image = image.clone();
            std::thread::spawn(move || (series, boot(&kernel, &initrd, &image, &out)))
        })
        .collect();
    runs.into_iter()
        .map(|run| run.join().expect("a guest's thread panicked"))
        .collect()
}

/// The matrix's root filesystem with ztrace and the test programs under `/matrix`, as an ext4
/// image (each guest writes to its own snapshot of it).
fn make_image(rootfs: &Path, work: &Path) -> PathBuf {
    let tree = work.join("rootfs");
    run("cp", Command::new("cp").arg("-a").arg(rootfs).arg(&tree));
    let m = tree.join("matrix");
    std::fs::create_dir_all(m.join("www")).expect("create /matrix");
    let ztrace = std::env::var_os("ZTRACE_BIN")
        .map(PathBuf::from)
        .expect("ZTRACE_BIN (the agent binary) must be set");
    copy(&ztrace, &m.join("ztrace"));
    copy(&fixture("kernel_matrix/init.sh"), &m.join("init.sh"));
    copy(&fixture("https_server.py"), &m.join("https_server.py"));
    let certs = tls::Certs::make();
    copy(&certs.cert, &m.join("cert.pem"));
    copy(&certs.key, &m.join("key.pem"));
    // Debian's Go 1.19, the guest's glibc is the host's (both bookworm).
    tls::build_go_https(&m, "go");
    clients::build_stack_client_c(&m);
    std::fs::write(m.join("www/plain.txt"), "plain\n").expect("write www/plain.txt");
    std::fs::write(m.join("www/ready"), "ok\n").expect("write www/ready");
    std::fs::write(m.join("www/tp.txt"), "tp\n").expect("write www/tp.txt");
    let image = work.join("image.raw");
    run(
        "mkfs.ext4",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "matrix", "-d"])
            .arg(&tree)
            .arg(&image)
            .arg("900M"),
    );
    let _ = std::fs::remove_dir_all(&tree);
    image
}

/// Boots one kernel on the image and reads what its init wrote to the second serial port.
fn boot(kernel: &Path, initrd: &Path, image: &Path, out: &Path) -> Guest {
    let (console, results) = (out.join("console.log"), out.join("results.log"));
    // TCG without cmpxchg16b: with it, 6.12's slab allocator double-faults under this qemu.
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max,-cx16",
        "-smp",
        "2",
        "-m",
        "2048",
    ])
    .args([
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-net",
        "none",
    ])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args([
        "-append",
        "root=/dev/vda rw console=ttyS0 init=/matrix/init.sh panic=-1 quiet",
    ])
    .arg("-drive")
    .arg(format!(
        "file={},format=raw,if=virtio,snapshot=on",
        image.display()
    ))
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-serial")
    .arg(format!("file:{}", results.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = qemu
        .spawn()
        .expect("start qemu-system-x86_64 (cargo xtask test installs qemu-system-x86)");
    let started = Instant::now();
    let mut timed_out = false;
    loop {
        if child.try_wait().expect("wait for qemu").is_some() {
            break;
        }
        if started.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut guest = parse(&std::fs::read_to_string(&results).unwrap_or_default());
    guest.console = std::fs::read_to_string(&console).unwrap_or_default();
    if timed_out {
        guest
            .status
            .insert("timed_out".into(), format!("{} s", GUEST_TIMEOUT.as_secs()));
    }
    guest
}

/// `@@ key value` lines and `@@begin NAME` ... `@@end NAME` blocks.
fn parse(text: &str) -> Guest {
    let mut guest = Guest::default();
    let mut block: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("@@begin ") {
            block = Some(name.to_owned());
        } else if line.starts_with("@@end ") {
            block = None;
        } else if let Some(rest) = line.strip_prefix("@@ ") {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            guest.status.insert(key.to_owned(), value.to_owned());
        } else {
            match block.as_deref() {
                Some("ztrace.log") => {
                    guest.log.push_str(line);
                    guest.log.push('\n');
                }
                Some("spans.json") => guest.spans.extend(Span::parse(line)),
                _ => {}
            }
        }
    }
    guest
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// On a supported kernel: every program attached, ztrace ran and stopped cleanly, and each
/// exchange gave its server and client span, linked, with a stack on the C client's.
fn check_supported(series: &str) {
    let guest = guest(series);
    assert_eq!(
        guest.status("ready"),
        Some(""),
        "ztrace did not become ready on Linux {series}x:\n{}",
        guest.describe()
    );
    assert!(
        guest
            .status("kernel")
            .is_some_and(|k| k.starts_with(series)),
        "{}",
        guest.describe()
    );

    // The attach table: every row ok, and all of them attached.
    let table: Vec<&str> = guest
        .log
        .lines()
        .skip_while(|l| *l != "attach table:")
        .skip(1)
        .take_while(|l| l.starts_with("  ok") || l.starts_with("  FAIL"))
        .collect();
    // Every program of `agent/src/bpf/attach.rs` (24 syscall and sched tracepoints at least).
    assert!(
        table.len() >= 24
            && [
                "syscalls/sys_exit_read",
                "syscalls/sys_enter_write",
                "syscalls/sys_exit_writev",
                "sched/sched_process_exec"
            ]
            .iter()
            .all(|hook| table.iter().any(|row| row.ends_with(hook))),
        "the attach table has {} rows:\n{}",
        table.len(),
        guest.describe()
    );
    assert!(
        table.iter().all(|l| l.starts_with("  ok")),
        "a program was refused on Linux {series}x:\n{}",
        table.join("\n")
    );
    let summary = format!("  {0} of {0} programs attached", table.len());
    assert!(
        guest.log.lines().any(|l| l == summary),
        "no `{summary}` line:\n{}",
        guest.describe()
    );
    // The tail call that copies a vectored call's segments beyond the first 8 loaded.
    assert!(
        !guest.log.contains("keep only their first 8 segments"),
        "zt_iovecs_more was refused on Linux {series}x:\n{}",
        guest.describe()
    );
    // The uprobe programs load when their first file is probed: OpenSSL and Go crypto/tls rows.
    assert!(
        guest
            .log
            .lines()
            .any(|l| l.contains("ok    uprobes   OpenSSL") && l.contains("libssl.so.3")),
        "libssl was not probed on Linux {series}x:\n{}",
        guest.describe()
    );
    assert!(
        guest
            .log
            .lines()
            .any(|l| l.contains("ok    uprobes   Go crypto/tls /matrix/go_https")),
        "the Go program's crypto/tls was not probed on Linux {series}x:\n{}",
        guest.describe()
    );
    assert!(
        guest
            .log
            .lines()
            .any(|l| l.contains("ok    goroutine /matrix/go_https")),
        "the Go program's goroutines are not followed on Linux {series}x:\n{}",
        guest.describe()
    );
    assert!(
        !guest.log.contains("FAIL"),
        "something failed on Linux {series}x:\n{}",
        guest.describe()
    );
    // The vectored reads' exits that draw request ids, and the program they hand on to.
    assert!(
        !guest.log.contains("readv/recvmsg get no request ids"),
        "zt_saved_exit was refused on Linux {series}x:\n{}",
        guest.describe()
    );
    // The programs that read a request's own traceparent, and what they read: one request
    // each in plain HTTP, over OpenSSL and over Go's crypto/tls.
    assert!(
        !guest.log.contains("traceparent headers"),
        "zt_read_traceparent or zt_tls_traceparent was refused on Linux {series}x:\n{}",
        guest.describe()
    );
    let stats = ztrace_e2e::ztrace::stats_line(&guest.log)
        .unwrap_or_else(|| panic!("no stats line on Linux {series}x:\n{}", guest.describe()));
    assert_eq!(
        stats
            .get("kernel_propagate_server_from_header")
            .and_then(|v| v.as_u64()),
        Some(3),
        "Linux {series}x: the kernel did not take the ids of /tp.txt, /tls-tp and /go-tp from their traceparent:\n{}",
        guest.describe()
    );
    for (status, path) in [
        ("curl_tp", "/tp.txt"),
        ("curl_tls_tp", "/tls-tp"),
        ("curl_go_tp", "/go-tp"),
    ] {
        assert_eq!(guest.status(status), Some("200"), "{}", guest.describe());
        assert_eq!(
            guest.span("server", path).trace_id(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{}",
            guest.describe()
        );
    }
    // The optional trace-context programs passed this kernel's verifier too.
    for line in [
        "ok    optional  sock_ops on cgroup",
        "ok    optional  sk_msg on client sockets: traceparent added",
    ] {
        assert!(
            guest.log.contains(line),
            "Linux {series}x: no `{line}` line:\n{}",
            guest.describe()
        );
    }
    assert_eq!(
        guest.status("ztrace_exit"),
        Some("0"),
        "ztrace did not exit cleanly on SIGINT:\n{}",
        guest.describe()
    );
    assert!(
        guest.log.lines().any(|l| l.starts_with("ztrace stats: {")),
        "no stats line:\n{}",
        guest.describe()
    );

    // What the programs saw themselves.
    assert_eq!(
        guest.status("curl_plain"),
        Some("200"),
        "{}",
        guest.describe()
    );
    assert_eq!(
        guest.status("curl_tls"),
        Some("200"),
        "{}",
        guest.describe()
    );
    assert_eq!(
        guest.status("go_get"),
        Some("0 200"),
        "{}",
        guest.describe()
    );
    assert_eq!(
        guest.status("stack_client"),
        Some("0"),
        "{}",
        guest.describe()
    );

    for (path, server_service, client_service) in [
        ("/plain.txt", "http.server", "curl"),
        ("/tls", "https_server", "curl"),
        ("/go", "go_https", "go_https"),
    ] {
        let server = guest.span("server", path);
        let client = guest.span("client", path);
        assert_eq!(server.service(), Some(server_service), "{server:?}");
        assert_eq!(client.service(), Some(client_service), "{client:?}");
        for span in [server, client] {
            assert_eq!(
                span.attr_str("http.request.method"),
                Some("GET"),
                "{span:?}"
            );
            assert_eq!(
                span.attr_i64("http.response.status_code"),
                Some(200),
                "{span:?}"
            );
        }
        checks::linked(client, server);
    }
    let stacked = guest.span("client", "/orders/42");
    assert_eq!(stacked.service(), Some("stack_client"), "{stacked:?}");
    let stack = stacked
        .attr_str("code.stacktrace")
        .unwrap_or_else(|| panic!("no code.stacktrace on Linux {series}x: {stacked:?}"));
    assert!(
        stack.contains("fetch_orders"),
        "the C client's stack does not name fetch_orders on Linux {series}x:\n{stack}"
    );
    assert!(
        stack.contains("main"),
        "the C client's stack does not reach main on Linux {series}x:\n{stack}"
    );
}

#[test]
#[ignore = "needs root, qemu and the kernel matrix; run by cargo xtask test"]
fn linux_6_1_loads_every_program_and_traces() {
    check_supported("6.1.");
}

#[test]
#[ignore = "needs root, qemu and the kernel matrix; run by cargo xtask test"]
fn linux_6_12_loads_every_program_and_traces() {
    check_supported("6.12.");
}

#[test]
#[ignore = "needs root, qemu and the kernel matrix; run by cargo xtask test"]
fn linux_5_10_is_refused_in_one_sentence() {
    let guest = guest("5.10.");
    assert_eq!(
        guest.status("ztrace_exit"),
        Some("1"),
        "ztrace must refuse Linux 5.10:\n{}",
        guest.describe()
    );
    assert!(guest.status("ready").is_none(), "{}", guest.describe());
    let lines: Vec<&str> = guest.log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "one sentence, nothing else:\n{}",
        guest.describe()
    );
    assert!(
        lines[0].starts_with("ztrace: this kernel (5.10.")
            && lines[0].contains("is too old: ztrace needs Linux 5.15 or newer"),
        "{}",
        lines[0]
    );
}
