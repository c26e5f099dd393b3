//! A real memcached 1.6 server on loopback (Debian's `memcached`, UDP off) and its Python client
//! pymemcache from the test venv (`tests/fixtures/memcached_client.py`).

use std::process::Command;
use std::time::Duration;

use crate::postgres::{run, ClientRun};
use crate::process::Proc;
use crate::{fixture, free_port, python};

/// How long the server start and the client may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A memcached server on 127.0.0.1, stopped on drop.
pub struct MemcachedServer {
    proc: Proc,
    pub port: u16,
}

impl MemcachedServer {
    /// `memcached -l 127.0.0.1 -p PORT -U 0 -u root -m 64`; returns once it listens.
    pub fn start() -> MemcachedServer {
        let port = free_port();
        let mut cmd = Command::new("memcached");
        cmd.args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-u",
            "root",
            "-m",
            "64",
        ]);
        let mut proc = Proc::spawn("memcached", &mut cmd);
        proc.wait_listening(([127, 0, 0, 1], port).into(), TIMEOUT, None);
        MemcachedServer { proc, port }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `tests/fixtures/memcached_client.py PORT` on the test venv's Python.
    pub fn python_client(&self) -> ClientRun {
        let mut cmd = Command::new(python());
        cmd.arg(fixture("memcached_client.py"))
            .arg(self.port.to_string());
        run("memcached_client.py", &mut cmd)
    }
}
