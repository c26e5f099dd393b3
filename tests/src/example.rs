//! The example system of `examples/` (orders, users, inventory) on loopback: one PostgreSQL
//! server with a database per service, loaded from `examples/sql/`, and the three services in
//! Python (`examples/python/`, run with `/usr/bin/python3` for Debian's psycopg2) or Go
//! (`examples/go/`, built in GOPATH mode against Debian's lib/pq, once per service name); and
//! the Python-only cache-and-messaging flow ([`Flow`]: catalog, notifier, Redis, NATS).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::postgres::PgServer;
use crate::process::Proc;
use crate::{free_port, repo_root, TempDir};

/// How long a service may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The services, in the order they are started (callees first).
pub const SERVICES: [&str; 3] = ["users", "inventory", "orders"];

/// Which implementation of the example runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Python,
    Go,
}

/// One running service.
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    pub proc: Proc,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// The running example: PostgreSQL and the three services, all stopped on drop.
pub struct Example {
    /// Services stop before the database (field order).
    pub services: Vec<Service>,
    pub pg: PgServer,
    _bin: TempDir,
}

/// The Go example built as `dir/orders`, `dir/users`, `dir/inventory`.
pub fn build_go(dir: &Path) -> PathBuf {
    let source = repo_root().join("examples/go/main.go");
    let first = dir.join(SERVICES[0]);
    let out = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&first)
        .arg(&source)
        .envs([
            ("GO111MODULE", "off"),
            ("GOPATH", "/usr/share/gocode"),
            ("GOPROXY", "off"),
            ("CGO_ENABLED", "0"),
        ])
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build of the example failed (apt-get install golang-go golang-github-lib-pq-dev):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in &SERVICES[1..] {
        std::fs::copy(&first, dir.join(name)).expect("copy the Go example binary");
    }
    dir.to_path_buf()
}

/// Creates and fills the example's databases `dbs` (`examples/sql/{db}.sql`).
fn load_databases(pg: &PgServer, dbs: &[&str]) {
    for db in dbs {
        let created = pg.psql(&format!("CREATE DATABASE {db}"));
        assert!(created.success, "CREATE DATABASE {db}: {}", created.stderr);
        let sql = std::fs::read_to_string(repo_root().join(format!("examples/sql/{db}.sql")))
            .expect("read the example SQL");
        let loaded = pg.psql_db(db, &sql);
        assert!(
            loaded.success,
            "loading examples/sql/{db}.sql: {}",
            loaded.stderr
        );
    }
}

/// `/usr/bin/python3 -u examples/python/{name}.py` with the database server in its environment.
fn python_service(name: &str, pg: &PgServer) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-u")
        .arg(repo_root().join(format!("examples/python/{name}.py")))
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg.port.to_string())
        .env("PGUSER", crate::postgres::USER);
    cmd
}

/// The example's cache-and-messaging flow (Python only): `catalog` serves `GET /items/{id}`
/// through a Redis cache in front of the inventory database and publishes `items.viewed` to
/// NATS; `notifier` consumes it and calls users. PostgreSQL (databases `users` and
/// `inventory`), redis-server and nats-server on free loopback ports; everything stops on drop.
pub struct Flow {
    /// Processes stop in field order: the subscriber and services before the servers.
    pub notifier: Proc,
    pub catalog: Service,
    pub users: Service,
    pub nats: crate::nats::NatsServer,
    pub redis: crate::redis::RedisServer,
    pub pg: PgServer,
}

impl Flow {
    /// Starts the servers, then users, catalog and notifier, each as a user would from
    /// `examples/python/`; returns once the services listen and notifier has subscribed.
    pub fn start() -> Flow {
        let pg = PgServer::start();
        load_databases(&pg, &["users", "inventory"]);
        let redis = crate::redis::RedisServer::start(None);
        let nats = crate::nats::NatsServer::start();
        let nats_url = format!("nats://127.0.0.1:{}", nats.port);
        let start = |name: &'static str, cmd: &mut Command| {
            let port = free_port();
            let mut proc = Proc::spawn(name, cmd.env("PORT", port.to_string()));
            proc.wait_for_stdout("listening on", START_TIMEOUT);
            Service { name, port, proc }
        };
        let users = start("users", &mut python_service("users", &pg));
        let catalog = start(
            "catalog",
            python_service("catalog", &pg)
                .env("REDIS_URL", format!("redis://127.0.0.1:{}/0", redis.port))
                .env("NATS_URL", &nats_url),
        );
        let mut notifier = Proc::spawn(
            "notifier",
            python_service("notifier", &pg)
                .env("NATS_URL", &nats_url)
                .env("USERS_URL", format!("http://127.0.0.1:{}", users.port)),
        );
        notifier.wait_for_stdout("subscribed to items.viewed", START_TIMEOUT);
        Flow {
            notifier,
            catalog,
            users,
            nats,
            redis,
            pg,
        }
    }
}

impl Example {
    /// PostgreSQL with the three databases loaded, then users, inventory and orders (orders in
    /// `orders_lang`, the others in `lang`); returns once every service listens.
    pub fn start(lang: Lang) -> Example {
        Self::start_mixed(lang, lang)
    }

    /// Like [`Example::start`], with orders in its own language (a chain across languages).
    pub fn start_mixed(lang: Lang, orders_lang: Lang) -> Example {
        Self::start_with(lang, orders_lang, &[])
    }

    /// Like [`Example::start_mixed`], with extra environment variables for every service.
    pub fn start_with(lang: Lang, orders_lang: Lang, envs: &[(&str, &str)]) -> Example {
        let pg = PgServer::start();
        load_databases(&pg, &SERVICES);
        let bin = TempDir::new("example-go");
        if lang == Lang::Go || orders_lang == Lang::Go {
            build_go(bin.path());
        }
        let mut services: Vec<Service> = Vec::new();
        for name in SERVICES {
            let port = free_port();
            let lang = if name == "orders" { orders_lang } else { lang };
            let mut cmd = match lang {
                Lang::Python => {
                    let mut c = Command::new("/usr/bin/python3");
                    c.arg("-u")
                        .arg(repo_root().join(format!("examples/python/{name}.py")));
                    c
                }
                Lang::Go => Command::new(bin.join(name)),
            };
            cmd.envs(envs.iter().copied())
                .env("PORT", port.to_string())
                .env("PGHOST", "127.0.0.1")
                .env("PGPORT", pg.port.to_string())
                .env("PGUSER", crate::postgres::USER);
            for s in &services {
                let var = if s.name == "users" {
                    "USERS_URL"
                } else {
                    "INVENTORY_URL"
                };
                cmd.env(var, format!("http://127.0.0.1:{}", s.port));
            }
            let mut proc = Proc::spawn(name, &mut cmd);
            proc.wait_for_stdout("listening on", START_TIMEOUT);
            services.push(Service { name, port, proc });
        }
        Example {
            services,
            pg,
            _bin: bin,
        }
    }

    pub fn service(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// The URL of `GET /orders/{id}`.
    pub fn order_url(&self, id: u32) -> String {
        format!(
            "http://127.0.0.1:{}/orders/{id}",
            self.service("orders").port
        )
    }
}
