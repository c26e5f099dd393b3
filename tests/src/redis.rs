//! A real Redis 7 server on loopback (Debian's `redis-server`, no persistence, in a temporary
//! directory) and its clients: `redis-cli`, `redis-benchmark` (Debian's `redis-tools`) and
//! Python's redis-py from the test venv (`tests/fixtures/redis_client.py`, and for streams
//! `redis_stream_producer.py` and `redis_stream_consumer.py`).

use std::process::Command;
use std::time::Duration;

use crate::postgres::{run, ClientRun};
use crate::process::Proc;
use crate::{fixture, free_port, python, TempDir};

/// How long the server start and each client may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A Redis server on 127.0.0.1, stopped on drop.
pub struct RedisServer {
    proc: Proc,
    pub port: u16,
    /// `requirepass`, when set.
    pub password: Option<String>,
    _dir: TempDir,
}

impl RedisServer {
    /// `redis-server --port P --bind 127.0.0.1 --save "" --appendonly no`, with `requirepass`
    /// when `password` is given; returns once it listens.
    pub fn start(password: Option<&str>) -> RedisServer {
        let dir = TempDir::new("redis");
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(dir.path());
        if let Some(password) = password {
            cmd.args(["--requirepass", password]);
        }
        let mut proc = Proc::spawn("redis-server", &mut cmd);
        proc.wait_listening(([127, 0, 0, 1], port).into(), TIMEOUT, None);
        RedisServer {
            proc,
            port,
            password: password.map(str::to_owned),
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `redis-cli -h 127.0.0.1 -p PORT [--pass PASSWORD] ARGS...` (`--pass`, not `-a`: ztrace
    /// redacts the value of a flag named like a secret from `process.command_line`).
    pub fn cli(&self, args: &[&str]) -> ClientRun {
        let mut cmd = Command::new("redis-cli");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "--no-auth-warning",
        ]);
        if let Some(password) = &self.password {
            cmd.args(["--pass", password]);
        }
        cmd.args(args);
        run("redis-cli", &mut cmd)
    }

    /// `redis-benchmark -h 127.0.0.1 -p PORT ARGS...`.
    pub fn benchmark(&self, args: &[&str]) -> ClientRun {
        let mut cmd = Command::new("redis-benchmark");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args);
        run("redis-benchmark", &mut cmd)
    }

    /// `tests/fixtures/redis_client.py PORT PROTOCOL` on the test venv's Python, the password in
    /// its environment (`REDIS_PASSWORD`).
    pub fn python_client(&self, protocol: u8) -> ClientRun {
        let mut cmd = Command::new(python());
        cmd.arg(fixture("redis_client.py"))
            .arg(self.port.to_string())
            .arg(protocol.to_string())
            .env("REDIS_PASSWORD", self.password.as_deref().unwrap_or(""));
        run("redis_client.py", &mut cmd)
    }

    /// `tests/fixtures/redis_stream_consumer.py PORT URL PROTOCOL` on the test venv's Python,
    /// started with its consumer group created (it has printed `ready`); it GETs `url` while
    /// handling each entry.
    pub fn stream_consumer(&self, url: &str, protocol: u8) -> Proc {
        let mut cmd = Command::new(python());
        cmd.arg(fixture("redis_stream_consumer.py"))
            .arg(self.port.to_string())
            .arg(url)
            .arg(protocol.to_string());
        let mut proc = Proc::spawn("redis_stream_consumer.py", &mut cmd);
        proc.wait_for_stdout("ready", TIMEOUT);
        proc
    }

    /// `tests/fixtures/redis_stream_producer.py PORT PROTOCOL`, run to its end.
    pub fn stream_producer(&self, protocol: u8) -> ClientRun {
        let mut cmd = Command::new(python());
        cmd.arg(fixture("redis_stream_producer.py"))
            .arg(self.port.to_string())
            .arg(protocol.to_string());
        run("redis_stream_producer.py", &mut cmd)
    }
}
