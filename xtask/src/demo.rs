//! `cargo xtask demo`: the example system of `examples/` traced by ztrace, for a newcomer.
//!
//! Installs what is missing (PostgreSQL, psycopg2, Go and lib/pq from Debian), builds the agent,
//! starts one PostgreSQL server (as user `postgres` through `runuser`, on 127.0.0.1 and a
//! non-default port, its data under `target/demo/`) holding the databases `orders`, `users` and
//! `inventory`, then the three services (Python or Go); for the Python variant also the
//! cache-and-messaging flow: `redis-server` and `nats-server` (Debian's, on the demo's own ports,
//! Redis's data under `target/demo/`), `catalog` and the subscriber `notifier`; then ztrace with
//! its viewer; sends a few requests and prints the viewer's URL. Ctrl-C stops everything,
//! ztrace first.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, say};
use crate::{build, toolchain};

/// Debian packages the demo needs.
pub(crate) const PACKAGES: &[&str] = &[
    "postgresql",
    "python3-psycopg2",
    "golang-go",
    "golang-github-lib-pq-dev",
];
/// Debian packages of the flow (Python variant): the Redis and NATS servers, redis-py.
const FLOW_PACKAGES: &[&str] = &["redis-server", "nats-server", "python3-redis"];
/// The flow's servers and its HTTP service.
const REDIS_PORT: u16 = 63791;
const NATS_PORT: u16 = 42221;
const CATALOG_PORT: u16 = 8084;
/// PostgreSQL's programs (Debian's `postgresql` 15).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Services in start order (callees first) and their ports.
pub(crate) const SERVICES: [(&str, u16); 3] =
    [("users", 8082), ("inventory", 8083), ("orders", 8081)];

/// A child process in its own process group; stopped (SIGTERM, then SIGKILL after 15 s) on drop.
pub(crate) struct Running {
    name: &'static str,
    child: Child,
}

impl Running {
    pub(crate) fn spawn(name: &'static str, cmd: &mut Command) -> Result<Running> {
        // SAFETY: prctl is async-signal-safe; the child dies if xtask is killed.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("could not start {name}: {}", util::display(cmd)))?;
        Ok(Running { name, child })
    }

    /// The child's pid, which is also its process group's id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; the group is our child's.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                say!("stopped {}", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
        say!("killed {}", self.name);
    }
}

/// Which implementation of the example to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Python,
    Go,
}

pub fn demo(lang: Lang, pg_port: u16) -> Result<()> {
    if !util::is_root() {
        bail!("the demo runs ztrace and PostgreSQL: run it as root (sudo -E cargo xtask demo)");
    }
    toolchain::apt_install(PACKAGES)?;
    if lang == Lang::Python {
        toolchain::apt_install(FLOW_PACKAGES)?;
    }
    let agent = build::build(build::profile(false))?;
    let root = util::repo_root();
    let dir = util::target_dir().join("demo");
    std::fs::create_dir_all(&dir)?;

    // Stopped in reverse order of creation: ztrace, the services, PostgreSQL.
    let postgres = start_postgres(&dir, pg_port)?;
    load_databases(&root, pg_port)?;
    let executables = match lang {
        Lang::Python => vec!["python3".to_owned()],
        Lang::Go => {
            build_go(&root, &dir)?;
            SERVICES.iter().map(|(s, _)| (*s).to_owned()).collect()
        }
    };
    let mut services = Vec::new();
    for (name, port) in SERVICES {
        let mut cmd = match lang {
            Lang::Python => {
                let mut c = Command::new("/usr/bin/python3");
                c.arg("-u")
                    .arg(root.join(format!("examples/python/{name}.py")));
                c
            }
            Lang::Go => Command::new(dir.join("go").join(name)),
        };
        cmd.env("PORT", port.to_string())
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", pg_port.to_string())
            .env("PGUSER", "postgres")
            .env("USERS_URL", "http://127.0.0.1:8082")
            .env("INVENTORY_URL", "http://127.0.0.1:8083")
            .stdout(Stdio::null());
        services.push(Running::spawn(name, &mut cmd)?);
        wait_listening(name, port)?;
    }

    // The flow (Python only): catalog reads through Redis and publishes to NATS, notifier
    // consumes and calls users. Stopped after ztrace, before PostgreSQL.
    let (flow, handled) = match lang {
        Lang::Python => {
            let (running, handled) = start_flow(&root, &dir, pg_port)?;
            (running, Some(handled))
        }
        Lang::Go => (Vec::new(), None),
    };

    // ztrace traces the services, PostgreSQL and Redis only, so the demo's own requests are not
    // roots (nats-server, the broker, makes no spans).
    let mut cmd = Command::new(&agent);
    cmd.arg("--data-dir").arg(dir.join("data")).args([
        "--exe",
        "postgres",
        "--exe",
        "redis-server",
    ]);
    for exe in &executables {
        cmd.args(["--exe", exe]);
    }
    cmd.stderr(Stdio::piped());
    let mut ztrace = Running::spawn("ztrace", &mut cmd)?;
    let viewer = wait_ready(&mut ztrace)?;

    for id in 1..=5 {
        let status = get(8081, &format!("/orders/{id}"))?;
        say!("GET http://127.0.0.1:8081/orders/{id} -> {status}");
    }
    if let Some(handled) = &handled {
        // Items 1-3 then 1-2 again: a cache miss (Redis, PostgreSQL, Redis SET, NATS), then a
        // hit. One at a time: each once notifier handled the one before (messages it reads
        // together, a backlog, would leave its calls unlinked).
        for (item, user) in [(1, 1), (2, 2), (3, 3), (1, 4), (2, 5)] {
            let path = format!("/items/{item}?user={user}");
            let status = get(CATALOG_PORT, &path)?;
            say!("GET http://127.0.0.1:{CATALOG_PORT}{path} -> {status}");
            let _ = handled.recv_timeout(Duration::from_secs(10));
        }
    }
    say!("");
    say!("ztrace traces orders (:8081), users (:8082), inventory (:8083) and PostgreSQL (:{pg_port}).");
    say!("send more with: curl http://127.0.0.1:8081/orders/42");
    if lang == Lang::Python {
        say!("and catalog (:{CATALOG_PORT}) with Redis (:{REDIS_PORT}), NATS (:{NATS_PORT}) and notifier:");
        say!("  curl 'http://127.0.0.1:{CATALOG_PORT}/items/7?user=3'");
    }
    say!("open the viewer: {viewer}");
    say!("Ctrl-C stops everything.");
    wait_for_ctrl_c();
    say!("stopping...");
    drop(ztrace);
    drop(flow);
    drop(services);
    drop(postgres);
    Ok(())
}

/// Starts redis-server and nats-server, then catalog and notifier (after users, which notifier
/// calls); returns them in the order they are to stop (notifier first, the servers last), and
/// what says each time notifier handled a message.
fn start_flow(
    root: &Path,
    dir: &Path,
    pg_port: u16,
) -> Result<(Vec<Running>, std::sync::mpsc::Receiver<()>)> {
    let redis_dir = dir.join("redis");
    std::fs::create_dir_all(&redis_dir)?;
    let mut redis = Command::new("redis-server");
    redis
        .args(["--port", &REDIS_PORT.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(&redis_dir)
        .stdout(Stdio::null());
    let redis = Running::spawn("redis-server", &mut redis)?;
    wait_listening("redis-server", REDIS_PORT)?;
    let mut nats = Command::new("nats-server");
    nats.args(["-a", "127.0.0.1", "-p", &NATS_PORT.to_string()])
        .stderr(Stdio::null());
    let nats = Running::spawn("nats-server", &mut nats)?;
    wait_listening("nats-server", NATS_PORT)?;

    let python = |name: &str| {
        let mut c = Command::new("/usr/bin/python3");
        c.arg("-u")
            .arg(root.join(format!("examples/python/{name}.py")))
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", pg_port.to_string())
            .env("PGUSER", "postgres")
            .env("REDIS_URL", format!("redis://127.0.0.1:{REDIS_PORT}/0"))
            .env("NATS_URL", format!("nats://127.0.0.1:{NATS_PORT}"))
            .env("USERS_URL", "http://127.0.0.1:8082");
        c
    };
    let mut catalog = python("catalog");
    catalog
        .env("PORT", CATALOG_PORT.to_string())
        .stdout(Stdio::null());
    let catalog = Running::spawn("catalog", &mut catalog)?;
    wait_listening("catalog", CATALOG_PORT)?;
    let mut notifier = python("notifier");
    notifier.stdout(Stdio::piped());
    let mut notifier = Running::spawn("notifier", &mut notifier)?;
    // Its first line says it subscribed; the next ones (an event handled each) pass through.
    let stdout = notifier.child.stdout.take().context("notifier's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if !line.starts_with("subscribed") {
                say!("[notifier] {line}");
            }
            let _ = tx.send(());
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .context("notifier did not subscribe to items.viewed within 60 s")?;
    Ok((vec![notifier, catalog, nats, redis], rx))
}

/// initdb on first use, then the server in the foreground as user postgres.
pub(crate) fn start_postgres(dir: &Path, port: u16) -> Result<Running> {
    let data = dir.join("pg");
    let fresh = !data.join("PG_VERSION").is_file();
    std::fs::create_dir_all(&data)?;
    util::run(
        Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&data),
    )?;
    util::run(Command::new("chmod").arg("700").arg(&data))?;
    if fresh {
        util::run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(Path::new(PG_BIN).join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "--no-sync"])
                .stdout(Stdio::null()),
        )?;
    }
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(Path::new(PG_BIN).join("postgres"))
        .arg("-D")
        .arg(&data)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            &port.to_string(),
            "-k",
        ])
        .arg(&data)
        .args(["-c", "logging_collector=off"])
        .stderr(Stdio::null());
    let running = Running::spawn("postgres", &mut cmd)?;
    wait_listening("postgres", port)?;
    Ok(running)
}

fn psql(port: u16, db: &str, sql: &str) -> Result<Option<String>> {
    Ok(util::output_of(
        Command::new(Path::new(PG_BIN).join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &port.to_string(), "-d", db, "-c", sql]),
    ))
}

/// Creates and fills each service's database unless it exists.
pub(crate) fn load_databases(root: &Path, port: u16) -> Result<()> {
    for (db, _) in SERVICES {
        let exists = psql(
            port,
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{db}'"),
        )?;
        if exists.as_deref().map(str::trim) == Some("1") {
            continue;
        }
        psql(port, "postgres", &format!("CREATE DATABASE {db}"))?
            .with_context(|| format!("CREATE DATABASE {db}"))?;
        let sql = std::fs::read_to_string(root.join(format!("examples/sql/{db}.sql")))?;
        psql(port, db, &sql)?.with_context(|| format!("loading examples/sql/{db}.sql"))?;
        say!("created database {db}");
    }
    Ok(())
}

/// The Go example as `dir/go/{orders,users,inventory}` (one program, named per service).
pub(crate) fn build_go(root: &Path, dir: &Path) -> Result<PathBuf> {
    let out = dir.join("go");
    std::fs::create_dir_all(&out)?;
    for (name, _) in SERVICES {
        util::run(
            Command::new("go")
                .arg("build")
                .arg("-o")
                .arg(out.join(name))
                .arg(root.join("examples/go/main.go"))
                .envs([
                    ("GO111MODULE", "off"),
                    ("GOPATH", "/usr/share/gocode"),
                    ("GOPROXY", "off"),
                    ("CGO_ENABLED", "0"),
                ]),
        )?;
    }
    Ok(out)
}

pub(crate) fn wait_listening(name: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{name} is not listening on 127.0.0.1:{port} after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits for ztrace's ready line, passing its stderr through; returns the viewer's URL.
fn wait_ready(ztrace: &mut Running) -> Result<String> {
    let stderr = ztrace.child.stderr.take().context("ztrace's stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut viewer = None;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[ztrace] {line}");
            if let Some(url) = line.strip_prefix("viewer: ") {
                viewer = Some(url.to_owned());
            }
            if line.contains("ztrace is ready") {
                let _ = tx.send(
                    viewer
                        .clone()
                        .unwrap_or_else(|| "http://127.0.0.1:9400".to_owned()),
                );
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(120))
        .context("ztrace did not get ready within 120 s")
}

fn get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply.lines().next().unwrap_or("").to_owned())
}

/// Blocks SIGINT and SIGTERM (the children are in their own process groups and do not get the
/// terminal's Ctrl-C) and waits for one of them.
fn wait_for_ctrl_c() {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the calls only read it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut signal = 0;
        libc::sigwait(&set, &mut signal);
    }
}
