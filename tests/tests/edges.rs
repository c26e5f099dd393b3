//! The edges real traffic has (issue 19): app servers named by their application, the viewer
//! not tracing itself, and what a `kill -9` of the agent leaves behind.
//!
//! The agent sees every process on the host, and other tests may run at the same time: every
//! assertion here is about the processes and ports these tests started.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ztrace_e2e::clients;
use ztrace_e2e::postgres::PgServer;
use ztrace_e2e::process::Proc;
use ztrace_e2e::servers::Server;
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{free_port, Span, TempDir, Ztrace};

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
    std::fs::write(billing.join("billing/wsgi.py"), wsgi_app("billing", "application"))
        .expect("write");
    let inventory = root.join("inventory");
    std::fs::create_dir_all(&inventory).expect("mkdir");
    std::fs::write(inventory.join("app.py"), wsgi_app("inventory", "app")).expect("write");

    let mut ztrace = Ztrace::start(&["--print=json"]);
    let servers = [
        (Gunicorn::start(&orders, "orders:app"), "orders"),
        (Gunicorn::start(&billing, "billing.wsgi:application"), "billing"),
        (Gunicorn::start(&inventory, "app:app"), "inventory"),
    ];
    let urls: Vec<String> = servers.iter().map(|(g, _)| g.url("/ping")).collect();
    let run = clients::curl(&urls);
    assert_eq!(run.transfers.iter().map(|t| t.0).collect::<Vec<_>>(), [200, 200, 200]);

    let ports: Vec<u16> = servers.iter().map(|(g, _)| g.port).collect();
    let ours = |s: &Span| s.is_server() && s.server_port().is_some_and(|p| ports.contains(&p));
    let spans = ztrace.wait_for_n_spans(3, ours, SPAN_TIMEOUT);
    for (server, want) in &servers {
        let mine: Vec<&Span> =
            spans.iter().filter(|s| s.server_port() == Some(server.port)).collect();
        assert_eq!(mine.len(), 1, "one server span on port {}:\n{mine:?}", server.port);
        assert_eq!(mine[0].service(), Some(*want), "{:?}", mine[0]);
        assert_eq!(mine[0].resource_str("service.name"), Some(*want), "{:?}", mine[0]);
        assert!(
            mine[0].resource_str("process.command_line").is_some_and(|c| c.contains("gunicorn")),
            "{:?}",
            mine[0]
        );
    }
    drop(servers);
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
            let run = clients::curl(&[api.clone()]);
            assert_eq!(run.transfers[0].0, 200, "GET {api}");
            run.pid
        })
        .collect();
    let other = clients::curl(&[server.url("/hello")]);
    assert_eq!(other.transfers[0].0, 200);

    // The request to the Python server comes after the viewer's: once its client span is out,
    // theirs would be too.
    let seen = ztrace.wait_for_spans(|s| s.pid() == Some(other.pid), SPAN_TIMEOUT);
    assert!(seen.iter().any(|s| s.is_client() && s.server_port() == Some(server.port)), "{seen:?}");
    let own = ztrace.spans_within(Duration::ZERO, |s| {
        s.server_port() == Some(ui_port) || s.pid().is_some_and(|p| viewers.contains(&p))
    });
    assert!(own.is_empty(), "spans of the viewer's own traffic (curl pids {viewers:?}):\n{own:?}");
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
    ztrace.wait_for_log("tracing only processes named postgres (--exe)", Duration::from_secs(5));

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
        let peer = span.attr_i64("network.peer.port").unwrap_or_else(|| panic!("no peer port: {span:?}"));
        let want = format!("postgres: postgres postgres 127.0.0.1({peer})");
        assert_eq!(span.resource_str("process.command_line"), Some(want.as_str()), "{span:?}");
    }
    ztrace.stop();
}
