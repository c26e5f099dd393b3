//! A real PostgreSQL 15 server on loopback, and its clients: `psql`, `pgbench`, Python's
//! psycopg2 (Debian's `python3-psycopg2`, run with `/usr/bin/python3`), and a compiled Go client
//! on lib/pq (`tests/fixtures/pq_client`, built in GOPATH mode against Debian's
//! `golang-github-lib-pq-dev`: the Go module proxy is out of reach).
//!
//! The server is a fresh cluster (`initdb -A trust`) in a temporary directory, run in the
//! foreground as user `postgres` (`postgres -D DIR -c listen_addresses=127.0.0.1 -p PORT -k DIR`)
//! so that it dies with its process group when dropped, even if the test is killed; no TLS
//! (`ssl` is off, so libpq's `sslmode=prefer` gets an `N` and goes on in plain text).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{describe_status, Proc};
use crate::{fixture, free_port, TempDir};

/// Where Debian puts PostgreSQL 15's programs.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// How long initdb, the server start and each client may take.
const TIMEOUT: Duration = Duration::from_secs(120);
/// The user the server runs as and the clients log in as.
pub const USER: &str = "postgres";

/// A PostgreSQL server on 127.0.0.1, stopped on drop.
pub struct PgServer {
    proc: Proc,
    pub port: u16,
    /// Field order: the server stops before its directory is removed.
    _dir: TempDir,
}

fn bin(name: &str) -> PathBuf {
    Path::new(BIN_DIR).join(name)
}

/// The uid and gid of the `postgres` user.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, USER])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no user {USER} (is the postgresql package installed?)"))
    };
    (id("-u"), id("-g"))
}

impl PgServer {
    /// initdb, then the server in the foreground; returns once it accepts connections.
    pub fn start() -> PgServer {
        Self::start_with(&[])
    }

    /// [`PgServer::start`] with extra `-c name=value` settings, e.g. `ssl=on`. Files they name
    /// must be readable by the `postgres` user (see [`PgServer::chown_to_postgres`]).
    pub fn start_with(settings: &[&str]) -> PgServer {
        assert!(
            bin("postgres").is_file(),
            "{} missing: apt-get install postgresql",
            bin("postgres").display()
        );
        let dir = TempDir::new("postgres");
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .expect("chown the cluster directory");
        let data = dir.join("data");
        let mut initdb = Command::new(bin("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", USER, "--no-sync"])
            .uid(uid)
            .gid(gid);
        let mut init = Proc::spawn("initdb", &mut initdb);
        init.close_stdin();
        match init.wait_exit(TIMEOUT) {
            Some(status) if status.success() => {}
            other => panic!(
                "initdb failed ({:?}):\n{}",
                other.map(describe_status),
                init.describe()
            ),
        }

        let port = free_port();
        let mut cmd = Command::new(bin("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-p",
                &port.to_string(),
                "-k",
            ])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "logging_collector=off"])
            .args(settings.iter().flat_map(|s| ["-c", s]))
            .uid(uid)
            .gid(gid);
        let mut proc = Proc::spawn("postgres", &mut cmd);
        proc.close_stdin();
        proc.wait_for_stderr("ready to accept connections", TIMEOUT);
        PgServer {
            proc,
            port,
            _dir: dir,
        }
    }

    /// Makes `path` owned by the `postgres` user (a TLS key must be, with mode 0600).
    pub fn chown_to_postgres(path: &Path) {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }

    /// The postmaster's pid (backends are its children).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `psql -X -c SQL` against the `postgres` database; returns (pid, exit success, stdout,
    /// stderr).
    pub fn psql(&self, sql: &str) -> ClientRun {
        let mut cmd = Command::new(bin("psql"));
        cmd.args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            USER,
            "-d",
            "postgres",
            "-c",
            sql,
        ]);
        run("psql", &mut cmd)
    }

    /// `psql -X -v ON_ERROR_STOP=1 -c SQL` against database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> ClientRun {
        let mut cmd = Command::new(bin("psql"));
        cmd.args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            USER,
            "-d",
            db,
            "-c",
            sql,
        ]);
        run("psql", &mut cmd)
    }

    /// `pgbench ARGS` against the `postgres` database.
    pub fn pgbench(&self, args: &[&str]) -> ClientRun {
        let mut cmd = Command::new(bin("pgbench"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(args)
            .arg("postgres");
        run("pgbench", &mut cmd)
    }

    /// `/usr/bin/python3 tests/fixtures/pg_client.py PORT` (psycopg2).
    pub fn psycopg2_client(&self) -> ClientRun {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(fixture("pg_client.py")).arg(self.port.to_string());
        run("psycopg2 client", &mut cmd)
    }
}

/// The Go lib/pq client, built into `dir` (the executable is `pq_client`).
pub fn build_pq_client(dir: &Path) -> PathBuf {
    build_go_fixture(dir, "pq_client", "golang-github-lib-pq-dev")
}

/// Builds `tests/fixtures/pgx_client` (Go, github.com/jackc/pgx/v4) into `dir`.
pub fn build_pgx_client(dir: &Path) -> PathBuf {
    build_go_fixture(dir, "pgx_client", "golang-github-jackc-pgx-v4-dev")
}

/// Builds the Go program `tests/fixtures/NAME/main.go` in GOPATH mode against Debian's packaged
/// Go libraries (`package` names the one it needs).
fn build_go_fixture(dir: &Path, name: &str, package: &str) -> PathBuf {
    let out = dir.join(name);
    let mut cmd = Command::new("go");
    cmd.arg("build")
        .arg("-o")
        .arg(&out)
        .arg(fixture(&format!("{name}/main.go")))
        .envs([
            ("GO111MODULE", "off"),
            ("GOPATH", "/usr/share/gocode"),
            ("GOPROXY", "off"),
            ("CGO_ENABLED", "0"),
        ]);
    let run = run(&format!("go build {name}"), &mut cmd);
    assert!(
        run.success,
        "go build {name} failed (apt-get install golang-go {package}):\n{}",
        run.stderr
    );
    out
}

/// Debian's PostgreSQL JDBC driver (`libpostgresql-jdbc-java`).
pub const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

impl PgServer {
    /// Runs `tests/fixtures/JdbcClient.java` (Java 17 single-file source launch) against this
    /// server.
    pub fn jdbc_client(&self) -> ClientRun {
        assert!(
            Path::new(JDBC_JAR).exists(),
            "{JDBC_JAR} is missing: apt-get install libpostgresql-jdbc-java"
        );
        let mut cmd = Command::new("java");
        cmd.arg("-cp")
            .arg(JDBC_JAR)
            .arg(fixture("JdbcClient.java"))
            .arg(self.port.to_string());
        run("JdbcClient", &mut cmd)
    }

    /// Runs a Go client built by [`build_pq_client`] or [`build_pgx_client`] against this server.
    pub fn go_client(&self, binary: &Path) -> ClientRun {
        let mut cmd = Command::new(binary);
        cmd.arg(self.port.to_string());
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        run(&name, &mut cmd)
    }
}

/// The psycopg2 client with `--wait`: connected, waiting for [`WaitingClient::go`].
pub struct WaitingClient {
    proc: Proc,
}

impl PgServer {
    /// Starts the psycopg2 client with `--wait` and returns once its connection is open.
    pub fn psycopg2_waiting(&self) -> WaitingClient {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(fixture("pg_client.py"))
            .arg(self.port.to_string())
            .arg("--wait");
        let mut proc = Proc::spawn("psycopg2 client (waiting)", &mut cmd);
        proc.wait_for_stdout("connected", TIMEOUT);
        WaitingClient { proc }
    }
}

impl WaitingClient {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Lets it run its queries on the open connection, and waits for it to finish.
    pub fn go(&mut self) -> ClientRun {
        self.proc.send_line("go");
        self.proc.close_stdin();
        let Some(status) = self.proc.wait_exit(TIMEOUT) else {
            panic!("psycopg2 client did not finish:\n{}", self.proc.describe());
        };
        ClientRun {
            pid: self.proc.pid(),
            success: status.success(),
            stdout: self.proc.stdout(),
            stderr: self.proc.stderr(),
        }
    }
}

/// A client that ran to its end.
pub struct ClientRun {
    pub pid: u32,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a client to completion (bounded); its outcome, success or not.
pub fn run(name: &str, cmd: &mut Command) -> ClientRun {
    let mut proc = Proc::spawn(name, cmd);
    proc.close_stdin();
    let Some(status) = proc.wait_exit(TIMEOUT) else {
        panic!(
            "{name} did not finish within {TIMEOUT:?}:\n{}",
            proc.describe()
        );
    };
    ClientRun {
        pid: proc.pid(),
        success: status.success(),
        stdout: proc.stdout(),
        stderr: proc.stderr(),
    }
}
