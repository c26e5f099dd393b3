//! Simulated hosts on one machine, for tests of traces that cross hosts: each host is a
//! network namespace (joined to the other by a veth pair, or to the others by a bridge in a
//! namespace of its own; iproute2) and a cgroup v2 directory
//! that its processes are put in, so that one ztrace per host (`--cgroup`) traces only that
//! host's processes. One kernel runs them all, as containers on one node would share it.
//!
//! Everything is named after the test process's pid and removed on drop (namespaces with their
//! links, then the cgroups, which must be empty: drop the processes first).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One simulated host.
pub struct Host {
    /// Network namespace name (`ip netns`).
    pub netns: String,
    /// Its cgroup v2 directory: give it to the host's ztrace as `--cgroup`.
    pub cgroup: PathBuf,
    /// Its address on the link between the hosts.
    pub addr: Ipv4Addr,
}

/// Hosts joined by a veth pair (two) or by a bridge (more).
pub struct Hosts {
    pub hosts: Vec<Host>,
    /// The network namespace of the bridge that joins more than two hosts.
    switch: Option<String>,
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on v2 hosts, its `unified`
/// directory on hybrid ones).
pub fn cgroup_v2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("no cgroup v2 hierarchy is mounted")
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run(
        &format!("ip {}", args.join(" ")),
        Command::new("ip").args(args),
    );
}

impl Hosts {
    /// Two hosts, `10.231.N.1` and `10.231.N.2` on a veth pair (N from the pid).
    pub fn two() -> Hosts {
        let id = std::process::id();
        let hosts = Hosts::unlinked(2);
        let (a, b) = (format!("zth{id}a"), format!("zth{id}b"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        for (host, link) in hosts.hosts.iter().zip([&a, &b]) {
            host.attach(link);
        }
        hosts
    }

    /// `n` hosts, `10.231.N.1` to `10.231.N.n`, each joined by a veth pair to one bridge (a
    /// switch) in a network namespace of its own.
    pub fn many(n: u8) -> Hosts {
        let id = std::process::id();
        let mut hosts = Hosts::unlinked(n);
        let switch = format!("zth{id}-sw");
        let _ = Command::new("ip").args(["netns", "del", &switch]).output();
        ip(&["netns", "add", &switch]);
        hosts.switch = Some(switch.clone());
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (i, host) in hosts.hosts.iter().enumerate() {
            let (h, s) = (format!("zth{id}h{i}"), format!("zth{id}s{i}"));
            ip(&["link", "add", &h, "type", "veth", "peer", "name", &s]);
            ip(&["link", "set", &s, "netns", &switch]);
            ip(&["-n", &switch, "link", "set", &s, "master", "br0"]);
            ip(&["-n", &switch, "link", "set", &s, "up"]);
            host.attach(&h);
        }
        hosts
    }

    /// `n` namespaces and cgroups, not linked yet.
    fn unlinked(n: u8) -> Hosts {
        let id = std::process::id();
        let net = (id % 250) as u8;
        let root = cgroup_v2_root();
        let mut hosts = Hosts {
            hosts: Vec::new(),
            switch: None,
        };
        for i in 1..=n {
            let netns = format!("zth{id}-{i}");
            let _ = Command::new("ip").args(["netns", "del", &netns]).output();
            ip(&["netns", "add", &netns]);
            let cgroup = root.join(format!("ztrace-e2e-host{id}-{i}"));
            let _ = std::fs::remove_dir(&cgroup);
            std::fs::create_dir(&cgroup)
                .unwrap_or_else(|e| panic!("create {}: {e}", cgroup.display()));
            hosts.hosts.push(Host {
                netns,
                cgroup,
                addr: Ipv4Addr::new(10, 231, net, i),
            });
        }
        hosts
    }

    pub fn get(&self, i: usize) -> &Host {
        &self.hosts[i]
    }
}

impl Host {
    /// Moves the veth end `link` into this host and gives it the host's address.
    fn attach(&self, link: &str) {
        ip(&["link", "set", link, "netns", &self.netns]);
        ip(&[
            "-n",
            &self.netns,
            "addr",
            "add",
            &format!("{}/24", self.addr),
            "dev",
            link,
        ]);
        ip(&["-n", &self.netns, "link", "set", link, "up"]);
        ip(&["-n", &self.netns, "link", "set", "lo", "up"]);
    }

    /// `program args...` as a process of this host: put in its cgroup, then run in its network
    /// namespace (the same process: `sh` writes its pid to `cgroup.procs`, then execs).
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && ns="$1" && shift && exec ip netns exec "$ns" "$@""#)
            .arg(&self.cgroup)
            .arg(&self.netns);
        // `sh -c SCRIPT CGROUP NETNS program args...`: $0 and $1 are the two names.
        cmd.arg(program.as_ref());
        cmd
    }

    /// Runs `program args` in this host's network namespace (not its cgroup: untraced), to
    /// its end; panics when it fails.
    pub fn exec(&self, program: &str, args: &[&str]) {
        run(
            &format!("{program} {}", args.join(" ")),
            Command::new("ip")
                .args(["netns", "exec", &self.netns, program])
                .args(args),
        );
    }

    /// `http://ADDR:PORT`.
    pub fn url(&self, port: u16, path: &str) -> String {
        format!("http://{}:{port}{path}", self.addr)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Some(switch) = &self.switch {
            let _ = Command::new("ip").args(["netns", "del", switch]).output();
        }
        for host in &self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &host.netns])
                .output();
            // The cgroup empties once its processes are reaped; try for a few seconds.
            for _ in 0..50 {
                if std::fs::remove_dir(&host.cgroup).is_ok() || !host.cgroup.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
