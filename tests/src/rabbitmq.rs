//! A real RabbitMQ broker on loopback (Debian's `rabbitmq-server`, its own node name, ports,
//! Erlang port mapper and directories) and its Python clients (Debian's pika, run with
//! `/usr/bin/python3`): `tests/fixtures/amqp_consumer.py` and `tests/fixtures/amqp_publisher.py`;
//! and a publisher in Node (amqplib from npm): `tests/fixtures/amqp_publisher.js`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::postgres::{run, ClientRun};
use crate::process::Proc;
use crate::{fixture, free_port, node_modules, wait_until, TempDir};

/// How long the broker's start (3-7 s here, more on a loaded machine) and each client may take.
const TIMEOUT: Duration = Duration::from_secs(90);
/// The broker's scripts, not the `/usr/sbin` wrapper (which switches user and logs to /var/log).
const BIN: &str = "/usr/lib/rabbitmq/bin";

/// A RabbitMQ broker on 127.0.0.1, stopped (`rabbitmqctl stop`) on drop.
pub struct RabbitServer {
    /// `rabbitmq-server` (a shell script whose child is the Erlang VM).
    proc: Proc,
    /// The Erlang port mapper the node registers with, started first so that it is ours.
    epmd: Proc,
    dir: TempDir,
    node: String,
    epmd_port: u16,
    pub port: u16,
}

impl RabbitServer {
    /// Starts the broker; returns once its AMQP port listens.
    pub fn start() -> RabbitServer {
        let dir = TempDir::new("rabbitmq");
        let (port, dist_port, epmd_port) = (free_port(), free_port(), free_port());
        let node = format!("ztrace{port}@localhost");
        let mut epmd = Proc::spawn(
            "epmd",
            Command::new("epmd").args(["-address", "127.0.0.1", "-port", &epmd_port.to_string()]),
        );
        epmd.wait_listening(([127, 0, 0, 1], epmd_port).into(), TIMEOUT, None);
        let plugins = dir.join("enabled_plugins");
        std::fs::write(&plugins, "[].\n").expect("write enabled_plugins");
        let mut cmd = Command::new(PathBuf::from(BIN).join("rabbitmq-server"));
        env(&mut cmd, &dir, &node, epmd_port)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins);
        let mut proc = Proc::spawn("rabbitmq-server", &mut cmd);
        proc.wait_listening(([127, 0, 0, 1], port).into(), TIMEOUT, None);
        RabbitServer {
            proc,
            epmd,
            dir,
            node,
            epmd_port,
            port,
        }
    }

    /// The Erlang VM's pid (the child of the `rabbitmq-server` script): the broker process.
    pub fn pid(&self) -> u32 {
        let script = self.proc.pid();
        let children = std::fs::read_to_string(format!("/proc/{script}/task/{script}/children"))
            .unwrap_or_default();
        children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .next()
            .unwrap_or(script)
    }

    /// The consumer, started with its queues declared (it has printed `ready`); it GETs `url`
    /// while handling each message.
    pub fn consumer(&self, url: &str) -> Proc {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(fixture("amqp_consumer.py"))
            .arg(self.port.to_string())
            .arg(url);
        let mut proc = Proc::spawn("amqp_consumer.py", &mut cmd);
        proc.wait_for_stdout("ready", TIMEOUT);
        proc
    }

    /// The publisher in Node (`tests/fixtures/amqp_publisher.js`, amqplib), run to its end.
    pub fn node_publisher(&self) -> ClientRun {
        let mut cmd = Command::new("node");
        cmd.env("NODE_PATH", node_modules())
            .arg(fixture("amqp_publisher.js"))
            .arg(self.port.to_string());
        run("amqp_publisher.js", &mut cmd)
    }

    /// The publisher, run to its end.
    pub fn publisher(&self) -> ClientRun {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(fixture("amqp_publisher.py"))
            .arg(self.port.to_string());
        run("amqp_publisher.py", &mut cmd)
    }
}

/// The environment every RabbitMQ command of this broker needs: its home (the Erlang cookie),
/// its node name and its port mapper.
fn env<'a>(cmd: &'a mut Command, dir: &TempDir, node: &str, epmd_port: u16) -> &'a mut Command {
    cmd.env("HOME", dir.path())
        .env("RABBITMQ_NODENAME", node)
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env("ERL_EPMD_PORT", epmd_port.to_string())
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        let mut stop = Command::new(PathBuf::from(BIN).join("rabbitmqctl"));
        env(&mut stop, &self.dir, &self.node, self.epmd_port).args(["-n", &self.node, "stop"]);
        let _ = stop
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let proc = &mut self.proc;
        if wait_until(Duration::from_secs(20), || proc.exited().map(|_| ())).is_none() {
            proc.terminate(Duration::from_secs(5));
        }
        self.epmd.terminate(Duration::from_secs(3));
    }
}
