//! A real NATS server on loopback (Debian's `nats-server`) and its clients: Python's from the test
//! venv (nats-py), `tests/fixtures/nats_subscriber.py` and `tests/fixtures/nats_publisher.py`,
//! and Node's (`nats` from npm), `tests/fixtures/nats_publisher.js`.

use std::process::Command;
use std::time::Duration;

use crate::postgres::{run, ClientRun};
use crate::process::Proc;
use crate::{fixture, free_port, node_modules, python};

/// How long the server start and each client may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A NATS server on 127.0.0.1, stopped on drop.
pub struct NatsServer {
    proc: Proc,
    pub port: u16,
}

impl NatsServer {
    /// `nats-server -a 127.0.0.1 -p PORT`; returns once it listens.
    pub fn start() -> NatsServer {
        let port = free_port();
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        let mut proc = Proc::spawn("nats-server", &mut cmd);
        proc.wait_listening(([127, 0, 0, 1], port).into(), TIMEOUT, None);
        NatsServer { proc, port }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The subscriber, started and subscribed (it has printed `ready`); it GETs `url` for each
    /// order it receives.
    pub fn subscriber(&self, url: &str) -> Proc {
        let mut cmd = Command::new(python());
        cmd.arg(fixture("nats_subscriber.py"))
            .arg(self.port.to_string())
            .arg(url);
        let mut proc = Proc::spawn("nats_subscriber.py", &mut cmd);
        proc.wait_for_stdout("ready", TIMEOUT);
        proc
    }

    /// The publisher, run to its end.
    pub fn publisher(&self) -> ClientRun {
        let mut cmd = Command::new(python());
        cmd.arg(fixture("nats_publisher.py"))
            .arg(self.port.to_string());
        run("nats_publisher.py", &mut cmd)
    }

    /// The same publisher in Node (the npm `nats` client), run to its end.
    pub fn node_publisher(&self) -> ClientRun {
        let mut cmd = Command::new("node");
        cmd.env("NODE_PATH", node_modules())
            .arg(fixture("nats_publisher.js"))
            .arg(self.port.to_string());
        run("nats_publisher.js", &mut cmd)
    }
}
