//! The edges real traffic has (issue 19): app servers (gunicorn, uvicorn, uWSGI) named by their
//! application, the viewer
//! not tracing itself, PostgreSQL backends' titles, and what a `kill -9` of the agent leaves
//! behind (nothing: the traced programs serve on, no program or uprobe stays in the kernel, and a
//! new agent works at once).
//!
//! The agent sees every process on the host, and other tests may run at the same time: every
//! assertion here is about the processes and ports these tests started.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ztrace_e2e::clients;
use ztrace_e2e::postgres::PgServer;
use ztrace_e2e::process::Proc;
use ztrace_e2e::servers::Server;
use ztrace_e2e::tls::{self, Certs, TlsServer};
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{free_port, wait_until, Span, TempDir, Ztrace};

/// How long a server may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A WSGI application that answers every request with its own name.
fn wsgi_app(name: &str, callable: &str) -> String {
    format!(
        "def {callable}(environ, start_response):\n    body = b'{name}\\n'\n    \
         start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])\n    \
         return [body]\n"
    )
}

/// Debian's gunicorn (`/usr/bin/gunicorn`, run by `/usr/bin/python3`) with two sync workers,
/// serving `app` from `dir` on a free loopback port.
struct Gunicorn {
    _proc: Proc,
    port: u16,
}

impl Gunicorn {
    fn start(dir: &Path, app: &str) -> Gunicorn {
        assert!(
            Path::new("/usr/bin/gunicorn").is_file(),
            "gunicorn is missing: apt-get install gunicorn"
        );
        let port = free_port();
        let mut cmd = Command::new("/usr/bin/gunicorn");
        cmd.args(["-w", "2", "-b", &format!("127.0.0.1:{port}"), "--chdir"])
            .arg(dir)
            .arg(app);
        let mut proc = Proc::spawn(&format!("gunicorn {app}"), &mut cmd);
        proc.wait_for_stderr("Booting worker", LISTEN_TIMEOUT);
        Gunicorn { _proc: proc, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Three services under gunicorn — `orders:app`, the package module `billing.wsgi:application`
/// and an `app:app` in a directory named `inventory` — give three service names on their server
/// spans, not three times `gunicorn`.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn gunicorn_services_are_named_by_their_application() {
    let root = TempDir::new("gunicorn");
    let orders = root.join("orders-svc");
    std::fs::create_dir_all(&orders).expect("mkdir");
    std::fs::write(orders.join("orders.py"), wsgi_app("orders", "app")).expect("write");
    let billing = root.join("billing-svc");
    std::fs::create_dir_all(billing.join("billing")).expect("mkdir");
    std::fs::write(billing.join("billing/__init__.py"), "").expect("write");
    std::fs::write(
        billing.join("billing/wsgi.py"),
        wsgi_app("billing", "application"),
    )
    .expect("write");
    let inventory = root.join("inventory");
    std::fs::create_dir_all(&inventory).expect("mkdir");
    std::fs::write(inventory.join("app.py"), wsgi_app("inventory", "app")).expect("write");

    let mut ztrace = Ztrace::start(&["--print=json"]);
    let servers = [
        (Gunicorn::start(&orders, "orders:app"), "orders"),
        (
            Gunicorn::start(&billing, "billing.wsgi:application"),
            "billing",
        ),
        (Gunicorn::start(&inventory, "app:app"), "inventory"),
    ];
    let urls: Vec<String> = servers.iter().map(|(g, _)| g.url("/ping")).collect();
    let run = clients::curl(&urls);
    assert_eq!(
        run.transfers.iter().map(|t| t.0).collect::<Vec<_>>(),
        [200, 200, 200]
    );

    let named: Vec<(u16, &str)> = servers.iter().map(|(g, want)| (g.port, *want)).collect();
    assert_named(&mut ztrace, &named, "gunicorn");
    drop(servers);
    ztrace.stop();
}

/// One SERVER span on each port of `named`, whose service is the name given there, from a
/// process whose command line names `host` (the app server).
fn assert_named(ztrace: &mut Ztrace, named: &[(u16, &str)], host: &str) {
    let ports: Vec<u16> = named.iter().map(|(port, _)| *port).collect();
    let ours = |s: &Span| s.is_server() && s.server_port().is_some_and(|p| ports.contains(&p));
    let spans = ztrace.wait_for_n_spans(named.len(), ours, SPAN_TIMEOUT);
    for (port, want) in named {
        let mine: Vec<&Span> = spans
            .iter()
            .filter(|s| s.server_port() == Some(*port))
            .collect();
        assert_eq!(mine.len(), 1, "one server span on port {port}:\n{mine:?}");
        assert_eq!(mine[0].service(), Some(*want), "{:?}", mine[0]);
        assert_eq!(
            mine[0].resource_str("service.name"),
            Some(*want),
            "{:?}",
            mine[0]
        );
        assert!(
            mine[0]
                .resource_str("process.command_line")
                .is_some_and(|c| c.contains(host)),
            "{:?}",
            mine[0]
        );
    }
}

/// An ASGI service under Debian's uvicorn (`main:app` in a directory named `catalog`, given
/// with `--app-dir`) and a WSGI one under uWSGI (`--module billing.wsgi:application`, a master
/// and two forked workers): named `catalog` and `billing`, not `uvicorn`, `python3` or
/// `uwsgi-core`.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn uvicorn_and_uwsgi_services_are_named_by_their_application() {
    for program in ["/usr/bin/uvicorn", "/usr/bin/uwsgi-core"] {
        assert!(
            Path::new(program).is_file(),
            "{program} is missing: apt-get install uvicorn uwsgi-core uwsgi-plugin-python3"
        );
    }
    let root = TempDir::new("app-servers");
    let catalog = root.join("catalog");
    std::fs::create_dir_all(&catalog).expect("mkdir");
    std::fs::write(
        catalog.join("main.py"),
        "async def app(scope, receive, send):\n    \
         if scope['type'] != 'http':\n        return\n    \
         await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-type', b'text/plain')]})\n    \
         await send({'type': 'http.response.body', 'body': b'catalog\\n'})\n",
    )
    .expect("write");
    let billing = root.join("billing-svc");
    std::fs::create_dir_all(billing.join("billing")).expect("mkdir");
    std::fs::write(billing.join("billing/__init__.py"), "").expect("write");
    std::fs::write(
        billing.join("billing/wsgi.py"),
        wsgi_app("billing", "application"),
    )
    .expect("write");

    let mut ztrace = Ztrace::start(&["--print=json"]);
    let (uvicorn_port, uwsgi_port) = (free_port(), free_port());
    let mut cmd = Command::new("/usr/bin/uvicorn");
    cmd.arg("--app-dir")
        .arg(&catalog)
        .args(["--host", "127.0.0.1", "--port", &uvicorn_port.to_string()])
        .args(["--lifespan", "off", "main:app"]);
    let mut uvicorn = Proc::spawn("uvicorn main:app", &mut cmd);
    let mut cmd = Command::new("/usr/bin/uwsgi-core");
    cmd.args(["--plugin", "python3", "--http-socket"])
        .arg(format!("127.0.0.1:{uwsgi_port}"))
        .arg("--chdir")
        .arg(&billing)
        .args([
            "--module",
            "billing.wsgi:application",
            "--master",
            "--processes",
            "2",
        ]);
    let mut uwsgi = Proc::spawn("uwsgi billing", &mut cmd);
    uvicorn.wait_listening(([127, 0, 0, 1], uvicorn_port).into(), LISTEN_TIMEOUT, None);
    uwsgi.wait_listening(([127, 0, 0, 1], uwsgi_port).into(), LISTEN_TIMEOUT, None);

    let urls = [
        format!("http://127.0.0.1:{uvicorn_port}/items/1"),
        format!("http://127.0.0.1:{uwsgi_port}/invoices/1"),
    ];
    let run = clients::curl(&urls);
    assert_eq!(
        run.transfers.iter().map(|t| t.0).collect::<Vec<_>>(),
        [200, 200]
    );
    assert_named(&mut ztrace, &[(uvicorn_port, "catalog")], "uvicorn");
    assert_named(&mut ztrace, &[(uwsgi_port, "billing")], "uwsgi");
    drop((uvicorn, uwsgi));
    ztrace.stop();
}

/// Reading the viewer (curl on `/api/traces`, as the page polls it) makes no span: the client
/// side of connections to the agent's own listening socket is not traced, while a request to
/// another server on this host, made the same way right after, is.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn the_viewer_does_not_trace_itself() {
    let ui_port = free_port();
    let ui = format!("127.0.0.1:{ui_port}");
    let mut ztrace = Ztrace::start(&["--print=json", "--ui", &ui]);
    let server = Server::python_http("127.0.0.1");

    let api = format!("http://{ui}/api/traces?limit=5");
    let viewers: Vec<u32> = (0..3)
        .map(|_| {
            let run = clients::curl(std::slice::from_ref(&api));
            assert_eq!(run.transfers[0].0, 200, "GET {api}");
            run.pid
        })
        .collect();
    let other = clients::curl(&[server.url("/hello")]);
    assert_eq!(other.transfers[0].0, 200);

    // The request to the Python server comes after the viewer's: once its client span is out,
    // theirs would be too.
    let seen = ztrace.wait_for_spans(|s| s.pid() == Some(other.pid), SPAN_TIMEOUT);
    assert!(
        seen.iter()
            .any(|s| s.is_client() && s.server_port() == Some(server.port)),
        "{seen:?}"
    );
    let own = ztrace.spans_within(Duration::ZERO, |s| {
        s.server_port() == Some(ui_port) || s.pid().is_some_and(|p| viewers.contains(&p))
    });
    assert!(
        own.is_empty(),
        "spans of the viewer's own traffic (curl pids {viewers:?}):\n{own:?}"
    );
    ztrace.stop();
}

/// With `--exe postgres` the start-up log says that only PostgreSQL is traced, and every
/// backend's `process.command_line` is its title — `postgres: user db host(port)`, without the
/// postmaster's arguments it shows for a moment after the fork, without the `initializing` it
/// shows at connection start (or whatever it is doing when read), and without the NUL padding
/// after it.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn postgres_backends_show_their_title_and_the_log_says_what_is_traced() {
    let pg = PgServer::start();
    let mut ztrace = Ztrace::start(&["--print=json", "--exe", "postgres"]);
    ztrace.wait_for_log(
        "tracing only processes named postgres (--exe)",
        Duration::from_secs(5),
    );

    // Sessions of 100 ms or more: a backend that exits within the agent's 10 ms polling can
    // be gone before its title is read again (README, PostgreSQL).
    const RUNS: usize = 5;
    for i in 0..RUNS {
        let run = pg.psql(&format!("SELECT pg_sleep(0.1), {i}"));
        assert!(run.success, "psql: {}", run.stderr);
    }
    let ours = |s: &Span| {
        s.is_server()
            && s.attr_str("db.system.name") == Some("postgresql")
            && s.server_port() == Some(pg.port)
    };
    let spans = ztrace.wait_for_n_spans(RUNS, ours, SPAN_TIMEOUT);
    for span in &spans {
        let peer = span
            .attr_i64("network.peer.port")
            .unwrap_or_else(|| panic!("no peer port: {span:?}"));
        let want = format!("postgres: postgres postgres 127.0.0.1({peer})");
        assert_eq!(
            span.resource_str("process.command_line"),
            Some(want.as_str()),
            "{span:?}"
        );
    }
    ztrace.stop();
}

/// A client run in a loop until stopped: each run's outcome checked, successes counted.
struct LoadLoop {
    name: &'static str,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    handle: Option<JoinHandle<Vec<String>>>,
}

impl LoadLoop {
    /// Runs `cmd()` again and again; a run is good when it exits 0 and `check(stdout)` is true.
    /// The first failures are kept for the report.
    fn start(
        name: &'static str,
        cmd: impl Fn() -> Command + Send + 'static,
        check: impl Fn(&str) -> bool + Send + 'static,
    ) -> LoadLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (stop2, ok2) = (stop.clone(), ok.clone());
        let handle = std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match cmd().output() {
                    Ok(out)
                        if out.status.success() && check(&String::from_utf8_lossy(&out.stdout)) =>
                    {
                        ok2.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(out) if failures.len() < 5 => failures.push(format!(
                        "{}: stdout {:?} stderr {:?}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    )),
                    Err(e) if failures.len() < 5 => failures.push(e.to_string()),
                    _ => failures.push(String::new()),
                }
            }
            failures
        });
        LoadLoop {
            name,
            stop,
            ok,
            handle: Some(handle),
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the loop; panics with the failures if any run failed.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self
            .handle
            .take()
            .map(|h| h.join().unwrap_or_else(|_| vec!["panicked".into()]))
            .unwrap_or_default();
        assert!(
            failures.is_empty(),
            "{}: {} failed run(s), the first: {:?}",
            self.name,
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        self.ok()
    }
}

impl Drop for LoadLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The BPF programs and links a process holds open, from `/proc/PID/fdinfo`: program id →
/// program type, and (link id, program id) per link.
#[derive(Debug, Default)]
struct BpfHeld {
    progs: HashMap<u32, u32>,
    links: Vec<(u32, u32)>,
}

/// `BPF_PROG_TYPE_KPROBE`: the type of uprobe programs.
const PROG_TYPE_KPROBE: u32 = 2;

impl BpfHeld {
    fn of(pid: u32) -> BpfHeld {
        let mut held = BpfHeld::default();
        // A process gone (or a kernel thread) holds nothing.
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            return held;
        };
        for entry in dir.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<u32>().ok())
            };
            match (field("link_id:"), field("prog_id:"), field("prog_type:")) {
                (Some(link), Some(prog), _) => held.links.push((link, prog)),
                (None, Some(prog), Some(kind)) => {
                    held.progs.insert(prog, kind);
                }
                _ => {}
            }
        }
        held
    }

    /// Links of uprobe programs.
    fn uprobe_links(&self) -> Vec<u32> {
        self.links
            .iter()
            .filter(|(_, p)| self.progs.get(p) == Some(&PROG_TYPE_KPROBE))
            .map(|(l, _)| *l)
            .collect()
    }
}

/// Processes holding uprobe links now (another agent, say), with their uprobe link count.
fn uprobe_holders() -> Vec<(u32, String, usize)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let n = BpfHeld::of(pid).uprobe_links().len();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (n > 0).then(|| (pid, comm.trim().to_owned(), n))
        })
        .collect()
}

/// The ids `bpftool -j {prog|link} show` lists: every program or link in the kernel.
fn bpftool_ids(object: &str) -> BTreeSet<u32> {
    let out = Command::new("bpftool")
        .args(["-j", object, "show"])
        .output()
        .expect("run bpftool (apt-get install bpftool)");
    assert!(
        out.status.success(),
        "bpftool {object} show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o["id"].as_u64())
                .filter_map(|id| u32::try_from(id).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The lines of the kernel's tracefs uprobe list that name one of `files`.
fn uprobe_events_naming(files: &[PathBuf]) -> Vec<String> {
    let text = std::fs::read_to_string("/sys/kernel/tracing/uprobe_events")
        .or_else(|_| std::fs::read_to_string("/sys/kernel/debug/tracing/uprobe_events"))
        .unwrap_or_default();
    text.lines()
        .filter(|l| {
            files.iter().any(|f| {
                f.file_name()
                    .is_some_and(|n| l.contains(&*n.to_string_lossy()))
            })
        })
        .map(str::to_owned)
        .collect()
}

/// The instruction x86-64 uprobes put at a probed address: `int3`.
const INT3: u8 = 0xcc;

/// Where a function of a mapped file starts in process `pid`, and its first byte in the file.
struct ProbePoint {
    pid: u32,
    what: String,
    addr: u64,
    file_byte: u8,
}

impl ProbePoint {
    /// `symbol` (as `nm` prints it) of the file whose path contains `file` in `pid`'s mappings.
    fn find(pid: u32, file: &str, symbol: &str) -> ProbePoint {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
        // (start, end, file offset, path) of each mapping of the file.
        let mappings: Vec<(u64, u64, u64, &str)> = maps
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let path = *f.get(5)?;
                let (start, end) = f[0].split_once('-')?;
                let hex = |x: &str| u64::from_str_radix(x, 16).ok();
                path.contains(file)
                    .then_some((hex(start)?, hex(end)?, hex(f[2])?, path))
            })
            .collect();
        let path = mappings
            .first()
            .map(|m| m.3)
            .unwrap_or_else(|| panic!("{file} is not mapped in {pid}:\n{maps}"));
        let out = Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(path)
            .output()
            .expect("run nm (binutils)");
        let out = if out.stdout.is_empty() {
            Command::new("nm").arg(path).output().expect("run nm")
        } else {
            out
        };
        let table = String::from_utf8_lossy(&out.stdout);
        let value = table
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let name = f.get(2)?.split("@@").next()?;
                (name == symbol)
                    .then(|| u64::from_str_radix(f[0], 16).ok())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no {symbol} in {path}"));
        // A position-dependent executable is mapped at its addresses; a shared library at a base.
        let inside = |a: u64| mappings.iter().find(|m| (m.0..m.1).contains(&a)).copied();
        let base = mappings.iter().find(|m| m.2 == 0).map_or(0, |m| m.0);
        let addr = if inside(value).is_some() {
            value
        } else {
            base + value
        };
        let (start, _, offset, _) =
            inside(addr).unwrap_or_else(|| panic!("{symbol} at {addr:#x} is not mapped in {pid}"));
        let mut byte = [0u8; 1];
        let mut f = std::fs::File::open(path).expect("open mapped file");
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(addr - start + offset)).expect("seek");
        std::io::Read::read_exact(&mut f, &mut byte).expect("read mapped file");
        ProbePoint {
            pid,
            what: format!("{symbol} in {path} (pid {pid})"),
            addr,
            file_byte: byte[0],
        }
    }

    /// The first byte of the function in the process's memory now.
    fn in_memory(&self) -> u8 {
        let mut byte = [0u8; 1];
        let mut f =
            std::fs::File::open(format!("/proc/{}/mem", self.pid)).expect("open /proc/PID/mem");
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(self.addr)).expect("seek mem");
        std::io::Read::read_exact(&mut f, &mut byte).expect("read mem");
        byte[0]
    }
}

/// `kill -9` of the agent while it traces nginx over TLS (OpenSSL uprobes in nginx and curl) and
/// a Go HTTPS server (crypto/tls and goroutine uprobes) under client loops: every request before,
/// during and after the kill gets its exact bytes; every program and link the agent held (its
/// uprobes among them) is gone from the kernel; the breakpoints the uprobes put in the servers'
/// code (`int3` at `SSL_write` and at `(*Conn).Write`) are gone, the code is the file's again; the
/// tracefs uprobe list names none of the probed files; and an agent started right after gives
/// spans for both servers.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn kill_9_leaves_the_traced_programs_serving_and_no_probe_behind() {
    let dir = TempDir::new("kill9");
    let certs = Certs::make();
    let go = tls::build_go_https(dir.path(), "go");
    let nginx = TlsServer::nginx(&certs, "TLSv1.2 TLSv1.3");
    let go_server = TlsServer::go(&go, &certs);
    let probed = [
        PathBuf::from("libssl.so"),
        go.clone(),
        PathBuf::from("nginx"),
    ];
    let uprobe_lines_before = uprobe_events_naming(&probed);

    let mut ztrace = Ztrace::start(&["--print=json"]);
    let curl = |url: String, ca: PathBuf| {
        move || {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--max-time", "10", "--cacert"])
                .arg(&ca)
                .arg(&url);
            cmd
        }
    };
    let loops = [
        LoadLoop::start(
            "curl → nginx (TLS)",
            curl(nginx.url("/hello"), certs.cert.clone()),
            |out| out == "hello over tls\n",
        ),
        LoadLoop::start(
            "curl → Go server (TLS)",
            curl(go_server.url("/hello"), certs.cert.clone()),
            |out| out == "hello from go over tls\n",
        ),
        LoadLoop::start(
            "Go client → Go server (TLS, keep-alive)",
            {
                let (go, ca, url) = (go.clone(), certs.cert.clone(), go_server.url("/items/1"));
                move || {
                    let mut cmd = Command::new(&go);
                    cmd.arg("get").arg(&ca).args(std::iter::repeat_n(&url, 20));
                    cmd
                }
            },
            |out| out.lines().filter(|l| *l == "200").count() == 20,
        ),
    ];
    // Traced through the uprobes: server spans of both servers (their plaintext is only seen there).
    let server_on = |port: u16| move |s: &Span| s.is_server() && s.server_port() == Some(port);
    ztrace.wait_for_spans(server_on(nginx.port), SPAN_TIMEOUT);
    ztrace.wait_for_spans(server_on(go_server.port), SPAN_TIMEOUT);

    let held = BpfHeld::of(ztrace.pid());
    let uprobes = held.uprobe_links();
    assert!(
        !uprobes.is_empty(),
        "the agent holds no uprobe link: {held:?}"
    );
    // The breakpoints themselves, in the traced processes' code: OpenSSL's SSL_write in nginx,
    // crypto/tls's (*Conn).Write in the Go server.
    let points = [
        ProbePoint::find(nginx.pid(), "libssl.so", "SSL_write"),
        ProbePoint::find(
            go_server.pid(),
            &go.to_string_lossy(),
            "crypto/tls.(*Conn).Write",
        ),
    ];
    for p in &points {
        assert_ne!(p.file_byte, INT3, "{}", p.what);
        assert_eq!(
            p.in_memory(),
            INT3,
            "no uprobe breakpoint at {} while the agent runs",
            p.what
        );
    }
    let served_before: Vec<u64> = loops.iter().map(LoadLoop::ok).collect();

    // SAFETY: kill(2) on the agent this test started.
    let killed_at = Instant::now();
    assert_eq!(
        unsafe { libc::kill(ztrace.pid() as libc::pid_t, libc::SIGKILL) },
        0,
        "kill -9"
    );
    let ours_progs: BTreeSet<u32> = held.progs.keys().copied().collect();
    let ours_links: BTreeSet<u32> = held.links.iter().map(|(l, _)| *l).collect();
    // A link holds its program: once the programs are gone, so are the links (checked after).
    let gone = wait_until(Duration::from_secs(30), || {
        bpftool_ids("prog").is_disjoint(&ours_progs).then_some(())
    });
    let cleaned_after = killed_at.elapsed();
    assert!(
        gone.is_some(),
        "after kill -9, programs {:?} of the agent are still in the kernel",
        bpftool_ids("prog")
            .intersection(&ours_progs)
            .collect::<Vec<_>>()
    );
    let links_left: Vec<u32> = bpftool_ids("link")
        .intersection(&ours_links)
        .copied()
        .collect();
    assert!(
        links_left.is_empty(),
        "after kill -9, links {links_left:?} of the agent are still in the kernel"
    );
    // The breakpoints go when the kernel releases the perf events behind the links, after the
    // programs' ids are gone.
    let restored = wait_until(Duration::from_secs(30), || {
        points
            .iter()
            .all(|p| p.in_memory() == p.file_byte)
            .then_some(())
    });
    let code_restored_after = killed_at.elapsed();
    if restored.is_none() {
        let left: Vec<String> = points
            .iter()
            .filter(|p| p.in_memory() != p.file_byte)
            .map(|p| {
                format!(
                    "{} (byte {:#x}, the file has {:#x})",
                    p.what,
                    p.in_memory(),
                    p.file_byte
                )
            })
            .collect();
        // Another agent on this machine (a test running beside this one) may probe the same code.
        let holders = uprobe_holders();
        assert!(
            !holders.is_empty(),
            "uprobe breakpoints left 30 s after kill -9 at {left:?}, and no process holds a uprobe"
        );
        eprintln!("breakpoints at {left:?} are still there, but {holders:?} hold uprobes: not counted against kill -9");
    }
    let leftover = uprobe_events_naming(&probed);
    assert_eq!(
        leftover, uprobe_lines_before,
        "uprobes left in the kernel's list after kill -9"
    );
    drop(ztrace);

    // The servers answer, with their exact bytes, while no agent runs.
    let untraced = wait_until(Duration::from_secs(30), || {
        loops
            .iter()
            .zip(&served_before)
            .all(|(l, before)| l.ok() > *before)
            .then_some(())
    });
    assert!(
        untraced.is_some(),
        "a load loop made no progress after kill -9"
    );

    // A new agent, right after: spans for both servers again.
    let started = Instant::now();
    let mut second = Ztrace::start(&["--print=json"]);
    let ready_after = started.elapsed();
    second.wait_for_spans(server_on(nginx.port), SPAN_TIMEOUT);
    second.wait_for_spans(server_on(go_server.port), SPAN_TIMEOUT);
    let second_uprobes = BpfHeld::of(second.pid()).uprobe_links().len();
    let served_while_killed: Vec<u64> = loops
        .iter()
        .zip(&served_before)
        .map(|(l, b)| l.ok() - b)
        .collect();
    let totals: Vec<(&str, u64)> = loops.into_iter().map(|l| (l.name, l.finish())).collect();
    second.stop();
    let runs: Vec<String> = totals
        .iter()
        .zip(&served_while_killed)
        .map(|((name, total), after)| {
            format!("{name}: {total} runs, {after} of them after the kill")
        })
        .collect();
    eprintln!(
        "kill -9 figures: {}; none failed. The agent held {} links ({} of them uprobes) and {} programs: \
         all gone from the kernel {:.1} s after SIGKILL, the servers' code free of breakpoints {:.1} s after it. \
         The new agent was ready {:.1} s after its start, with {second_uprobes} uprobe links, and gave spans \
         for both servers.",
        runs.join("; "),
        held.links.len(),
        uprobes.len(),
        held.progs.len(),
        cleaned_after.as_secs_f64(),
        code_restored_after.as_secs_f64(),
        ready_after.as_secs_f64()
    );
}
