//! The DaemonSet of `deploy/kubernetes/`, as far as a machine without a cluster can check it:
//!
//! - the manifests pass `kubernetes-validate --strict` for Kubernetes 1.37 and `checkov` with
//!   every remaining finding skipped by a reasoned annotation, and each added capability has a
//!   comment;
//! - the image of `cargo xtask image` runs under podman with the DaemonSet's security context
//!   read from `daemonset.yaml` (its capability list after `--cap-drop=ALL`, host PID, the same
//!   host paths read-only, read-only root, no new privileges, its limits, its environment), not
//!   privileged,
//!   answers `/healthz`, `/readyz` and `/metrics`, and traces a process of the host and processes
//!   in pods of a real containerd: two pods made over CRI as the kubelet makes them
//!   (`RunPodSandbox` with the pod's labels and annotations, `CreateContainer`, `StartContainer`),
//!   whose spans carry `service.name` from the pod's `resource.opentelemetry.io/service.name`
//!   annotation or, without it, from its `app.kubernetes.io/name` label, and the workload named by
//!   the controller's label — all asked of containerd over CRI by the agent; and a container that
//!   `ctr run` started with the kubelet's CRI annotations but no sandbox (a pod CRI does not
//!   know), whose names come from containerd's record of it and the pod name alone.
//!
//! One deliberate difference from a cluster: the agent's container uses the host's network, to
//! reach the OTLP receiver on loopback (a cluster reaches a Service). The containerd started here
//! keeps its state and socket under a temporary directory, which are mounted where the DaemonSet
//! mounts the node's `/run/containerd/io.containerd.runtime.v2.task` and
//! `/run/containerd/containerd.sock`. Its sandbox ("pause") image cannot be pulled here: the test
//! makes one from busybox-static and imports it.
//!
//! Needs: root, podman (`cargo xtask image` built `localhost/ztrace:latest`, or the image named by
//! `ZTRACE_IMAGE`), containerd and `ctr`, busybox-static, and a venv with kubernetes-validate and
//! checkov (`ZTRACE_K8S_VENV`, default `target/k8s-venv`; `cargo xtask test` makes all of these).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use ztrace_e2e::{
    clients,
    cri::{CriClient, Pod},
    free_port,
    otlp::OtlpReceiver,
    process::Proc,
    repo_root,
    servers::Server,
    wait_until, TempDir,
};

/// The agent's image: `ZTRACE_IMAGE`, else what `cargo xtask image` tags.
fn image() -> String {
    std::env::var("ZTRACE_IMAGE")
        .ok()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| "localhost/ztrace:latest".into())
}
const PODMAN_GLOBAL: &[&str] = &["--cgroup-manager=cgroupfs", "--events-backend=file"];
/// Where the DaemonSet mounts containerd's task records (the one host path the test replaces).
/// The uid of the test's pod.
const POD_UID: &str = "2f9a4c1e-7b3d-4e5f-8a9b-0c1d2e3f4a5b";
const CONTAINERD_TASKS: &str = "/run/containerd/io.containerd.runtime.v2.task";
/// Where the DaemonSet mounts containerd's socket (CRI).
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The image the test's pods run, made by [`import_busybox_image`].
const BUSYBOX_IMAGE: &str = "localhost/ztrace-e2e-busybox:1";

fn manifests() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

fn venv_bin(tool: &str) -> PathBuf {
    let venv = std::env::var_os("ZTRACE_K8S_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/k8s-venv"));
    let bin = venv.join("bin").join(tool);
    assert!(
        bin.is_file(),
        "{} is missing: `cargo xtask test` makes this venv",
        bin.display()
    );
    bin
}

/// Runs a command to its end; returns (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The resource files that kustomization.yaml lists.
fn kustomized_files() -> Vec<PathBuf> {
    let text = std::fs::read_to_string(manifests().join("kustomization.yaml"))
        .expect("kustomization.yaml");
    let files: Vec<PathBuf> = text
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(|f| manifests().join(f.trim()))
        .collect();
    assert!(files.len() >= 4, "kustomization.yaml lists {files:?}");
    files
}

/// A YAML file's documents, as JSON (through the venv's PyYAML).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let (ok, out) = run(Command::new(venv_bin("python")).args([
        "-c",
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
    ]).arg(path));
    assert!(ok, "cannot read {}: {out}", path.display());
    match serde_json::from_str(&out) {
        Ok(Value::Array(docs)) => docs,
        other => panic!("{}: {other:?}", path.display()),
    }
}

#[test]
#[ignore = "needs the k8s venv (kubernetes-validate, checkov); run by cargo xtask test"]
fn manifests_pass_schema_validation_and_the_security_policy_check() {
    let files = kustomized_files();
    for file in &files {
        assert!(file.is_file(), "{} is listed but missing", file.display());
    }
    let (ok, out) = run(Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "-k", "1.37.0"])
        .args(&files));
    assert!(ok, "kubernetes-validate --strict failed:\n{out}");
    assert_eq!(
        out.matches("passed for resource").count(),
        files.len(),
        "{out}"
    );

    // The privileged overlay is privileged on purpose: checkov looks at the base.
    let (ok, out) = run(Command::new(venv_bin("checkov"))
        .arg("-d")
        .arg(manifests())
        .args([
            "--skip-path",
            "privileged",
            "--compact",
            "--skip-download",
            "--framework",
            "kubernetes",
        ]));
    assert!(
        ok && out.contains("Failed checks: 0"),
        "checkov found unjustified findings:\n{out}"
    );

    // No privileged container, and every added capability says what it is for.
    let text = std::fs::read_to_string(manifests().join("daemonset.yaml")).expect("daemonset.yaml");
    assert_eq!(
        daemonset().container["securityContext"]["privileged"],
        Value::Bool(false)
    );
    let lines: Vec<&str> = text.lines().collect();
    let add = lines
        .iter()
        .position(|l| l.trim() == "add:")
        .expect("a capabilities.add list");
    let mut caps = 0;
    for (i, line) in lines.iter().enumerate().skip(add + 1) {
        let t = line.trim();
        if t.starts_with('#') {
            continue;
        }
        let Some(cap) = t.strip_prefix("- ") else {
            break;
        };
        caps += 1;
        let comment: Vec<&str> = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.trim().starts_with('#'))
            .copied()
            .collect();
        assert!(
            !comment.is_empty(),
            "capability {cap} has no comment above it"
        );
        assert!(
            comment.iter().any(|l| l.contains("Without it")),
            "the comment of {cap} does not say what breaks without it"
        );
    }
    assert!(caps >= 2, "no capabilities found in daemonset.yaml");
    // The overlay for clusters that insist on privileged: its patch applied to the base as
    // kustomize's strategic merge does (the container matched by name, `$patch: delete` removing
    // the capabilities) gives a DaemonSet that validates too. (No kustomize binary can be had.)
    let patch = yaml_docs(&manifests().join("privileged/privileged.yaml")).remove(0);
    let mut merged = yaml_docs(&manifests().join("daemonset.yaml")).remove(0);
    assert_eq!(
        (&patch["kind"], &patch["metadata"]["name"]),
        (&merged["kind"], &merged["metadata"]["name"])
    );
    let patched = &patch["spec"]["template"]["spec"]["containers"][0];
    let container = &mut merged["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(patched["name"], container["name"]);
    let security = container["securityContext"]
        .as_object_mut()
        .expect("securityContext");
    for (key, value) in patched["securityContext"]
        .as_object()
        .expect("the patch's securityContext")
    {
        if value.get("$patch").and_then(Value::as_str) == Some("delete") {
            security.remove(key);
        } else {
            security.insert(key.clone(), value.clone());
        }
    }
    assert_eq!(security.get("privileged"), Some(&Value::Bool(true)));
    let dir = TempDir::new("k8s-overlay");
    let file = dir.join("privileged-daemonset.json");
    std::fs::write(&file, merged.to_string()).expect("write");
    let (ok, out) = run(Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "-k", "1.37.0"])
        .arg(&file));
    assert!(
        ok,
        "the privileged overlay's DaemonSet does not validate:\n{out}"
    );
}

/// The DaemonSet's container spec and volumes.
struct DaemonSet {
    container: Value,
    volumes: Vec<Value>,
    host_pid: bool,
    config: Vec<(String, String)>,
}

fn daemonset() -> DaemonSet {
    let doc = yaml_docs(&manifests().join("daemonset.yaml"))
        .into_iter()
        .next()
        .expect("one document");
    let spec = &doc["spec"]["template"]["spec"];
    let config = yaml_docs(&manifests().join("configmap.yaml"))
        .into_iter()
        .next()
        .and_then(|c| c["data"].as_object().cloned())
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    DaemonSet {
        container: spec["containers"][0].clone(),
        volumes: spec["volumes"].as_array().cloned().unwrap_or_default(),
        host_pid: spec["hostPID"] == Value::Bool(true),
        config,
    }
}

/// The uids of the pods made over CRI.
const CHECKOUT_UID: &str = "7e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b";
const SHIPPER_UID: &str = "0b9a8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d";

/// Pod sandboxes made over CRI, stopped and removed on drop (their "pause" processes would
/// outlive the test's containerd).
struct Sandboxes {
    client: CriClient,
    ids: Vec<String>,
}

impl Sandboxes {
    /// `RunPodSandbox` of `pod`, then a container `container` of [`BUSYBOX_IMAGE`] running
    /// [`http_script`]; returns the container's id.
    fn start(&mut self, pod: &Pod<'_>, container: &str) -> String {
        std::fs::create_dir_all(pod.log_directory).expect("log directory");
        let config = pod.config();
        let sandbox = self
            .client
            .run_pod_sandbox(config.clone())
            .unwrap_or_else(|e| panic!("RunPodSandbox of {}: {e}", pod.name));
        self.ids.push(sandbox.clone());
        let script = http_script();
        self.client
            .start_container(
                &sandbox,
                &config,
                container,
                BUSYBOX_IMAGE,
                &["/bin/busybox", "sh", "-c", &script],
            )
            .unwrap_or_else(|e| panic!("container {container} of {}: {e}", pod.name))
    }
}

impl Drop for Sandboxes {
    fn drop(&mut self) {
        for id in &self.ids {
            if let Err(e) = self.client.remove_pod_sandbox(id) {
                eprintln!("removing pod sandbox {id}: {e}");
            }
        }
    }
}

/// A podman container removed on drop.
struct PodmanContainer {
    name: String,
    proc: Proc,
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(PODMAN_GLOBAL)
            .args(["rm", "-f", "-t", "5", &self.name])
            .output();
    }
}

/// `podman run` of the image with the DaemonSet's security context, mounts and environment;
/// `host_paths` replace the node's paths of the same name (see [`agent_args`]).
fn run_agent(
    ds: &DaemonSet,
    host_paths: &[(&str, PathBuf)],
    env: &[(&str, String)],
) -> PodmanContainer {
    run_agent_with(agent_args(ds, host_paths, env))
}

/// The `podman run` options that give the agent the DaemonSet's security context, mounts and
/// environment (the ConfigMap's, then `env`). A host path named in `host_paths` is mounted from
/// the path given there (the test's containerd instead of the node's); a socket that is not
/// named there is left out (the agent runs without it).
fn agent_args(
    ds: &DaemonSet,
    host_paths: &[(&str, PathBuf)],
    env: &[(&str, String)],
) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let sc = &ds.container["securityContext"];
    assert_ne!(sc["privileged"], Value::Bool(true));
    args.push("--cap-drop=ALL".into());
    for cap in sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
    {
        args.push(format!("--cap-add={}", cap.as_str().expect("capability")));
    }
    if ds.host_pid {
        args.push("--pid=host".into());
    }
    if sc["readOnlyRootFilesystem"] == Value::Bool(true) {
        args.push("--read-only".into());
    }
    if sc["allowPrivilegeEscalation"] == Value::Bool(false) {
        args.push("--security-opt=no-new-privileges".into());
    }
    if let Some(uid) = sc["runAsUser"].as_u64() {
        args.push(format!("--user={uid}"));
    }
    // The limits: memory `600Mi` is podman's `600m`; cpu `1` or `500m` (millicores).
    let limits = &ds.container["resources"]["limits"];
    if let Some(memory) = limits["memory"].as_str() {
        let (n, unit) = memory.split_at(
            memory
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(memory.len()),
        );
        let unit = match unit {
            "Ki" => "k",
            "Mi" => "m",
            "Gi" => "g",
            "" => "b",
            other => panic!("memory unit {other}"),
        };
        args.push(format!("--memory={n}{unit}"));
    }
    if let Some(cpu) = limits["cpu"].as_str() {
        let cpus = match cpu.strip_suffix('m') {
            Some(milli) => milli.parse::<f64>().expect("millicores") / 1000.0,
            None => cpu.parse().expect("cpus"),
        };
        args.push(format!("--cpus={cpus}"));
    }
    for mount in ds.container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
    {
        let (vol_name, at) = (
            mount["name"].as_str().expect("name"),
            mount["mountPath"].as_str().expect("mountPath"),
        );
        let volume = ds
            .volumes
            .iter()
            .find(|v| v["name"] == vol_name)
            .expect("the mount's volume");
        let ro = if mount["readOnly"] == Value::Bool(true) {
            ":ro"
        } else {
            ""
        };
        if let Some(host) = volume["hostPath"]["path"].as_str() {
            let socket = volume["hostPath"]["type"] == "Socket";
            let host = match host_paths.iter().find(|(p, _)| *p == host) {
                Some((_, replaced)) => replaced.clone(),
                None if socket => continue,
                None => PathBuf::from(host),
            };
            if !socket {
                std::fs::create_dir_all(&host).expect("host path");
            }
            args.push(format!("--volume={}:{at}{ro}", host.display()));
        } else if volume.get("emptyDir").is_some() {
            args.push(format!("--tmpfs={at}"));
        }
    }
    let config = ds.config.iter().map(|(k, v)| (k.as_str(), v.clone()));
    for (key, value) in config.chain(env.iter().map(|(k, v)| (*k, v.clone()))) {
        args.push(format!("--env={key}={value}"));
    }
    args
}

/// `podman run --rm` of the image with `args`, on the host's network (the receiver is on
/// loopback).
fn run_agent_with(args: Vec<String>) -> PodmanContainer {
    let name = format!("ztrace-e2e-{}", std::process::id());
    let mut cmd = Command::new("podman");
    cmd.args(PODMAN_GLOBAL)
        .args(["run", "--rm", "--name", &name, "--network=host"]);
    // This VM's bounding set lacks CAP_SYS_RESOURCE: podman needs explicit limits.
    cmd.args([
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=32768:32768",
    ]);
    cmd.args(args).arg(image());
    PodmanContainer {
        proc: Proc::spawn("ztrace (podman)", &mut cmd),
        name,
    }
}

/// A containerd of the test's own, its state and socket under `dir`, with its CRI plugin on:
/// the sandbox image is [`BUSYBOX_IMAGE`] and the CNI folders are empty ones under `dir` (the
/// test's pods use the host's network, which needs no CNI). `restrict_oom_score_adj`: runc
/// cannot lower a sandbox's `oom_score_adj` to the kubelet's -998 on these machines (no
/// `CAP_SYS_RESOURCE`; the container's init dies with "can't get final child's PID from pipe").
fn start_containerd(dir: &Path) -> Proc {
    let config = dir.join("config.toml");
    let d = dir.display();
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{BUSYBOX_IMAGE}\"\n  restrict_oom_score_adj = true\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{d}/cni/bin\"\n  conf_dir = \"{d}/cni/conf\"\n"
        ),
    )
    .expect("config.toml");
    let proc = Proc::spawn(
        "containerd",
        Command::new("containerd").arg("--config").arg(&config),
    );
    let up = wait_until(Duration::from_secs(20), || {
        dir.join("c.sock").exists().then_some(())
    });
    assert!(up.is_some(), "containerd did not start");
    proc
}

/// Makes [`BUSYBOX_IMAGE`] (busybox-static, a page at `/www/pod-check`, entry point `sleep`, so
/// that it also serves as the pods' sandbox image) as a docker-archive and imports it into the
/// test's containerd.
fn import_busybox_image(dir: &Path) {
    let layer = dir.join("image/layer");
    for sub in ["bin", "www", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(layer.join(sub)).expect("image layer");
    }
    std::fs::copy("/bin/busybox", layer.join("bin/busybox")).expect("busybox-static is installed");
    std::fs::write(layer.join("www/pod-check"), "pong\n").expect("page");
    let image = dir.join("image");
    let (ok, out) = run(Command::new("tar")
        .arg("-C")
        .arg(&layer)
        .arg("-cf")
        .arg(image.join("layer.tar"))
        .arg("."));
    assert!(ok, "tar: {out}");
    let (ok, out) = run(Command::new("sha256sum").arg(image.join("layer.tar")));
    assert!(ok, "sha256sum: {out}");
    let digest: String = out.chars().take(64).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "86400"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    std::fs::write(image.join("config.json"), config.to_string()).expect("config");
    let manifest = serde_json::json!([{
        "Config": "config.json", "RepoTags": [BUSYBOX_IMAGE], "Layers": ["layer.tar"],
    }]);
    std::fs::write(image.join("manifest.json"), manifest.to_string()).expect("manifest");
    let archive = dir.join("busybox-image.tar");
    let (ok, out) = run(Command::new("tar")
        .arg("-C")
        .arg(&image)
        .arg("-cf")
        .arg(&archive)
        .args(["manifest.json", "config.json", "layer.tar"]));
    assert!(ok, "tar: {out}");
    let (ok, out) = run(Command::new("ctr")
        .arg("--address")
        .arg(dir.join("c.sock"))
        .args(["-n", "k8s.io", "images", "import"])
        .arg(&archive));
    assert!(ok, "ctr images import: {out}");
}

/// The shell script of a pod's container: busybox's httpd, then 20 wget requests to it
/// (`/pod-check`).
fn http_script() -> String {
    let port = free_port();
    format!(
        "busybox httpd -p 127.0.0.1:{port} -h /www; i=0; while [ $i -lt 20 ]; do \
         busybox wget -q -O /dev/null http://127.0.0.1:{port}/pod-check; i=$((i+1)); busybox sleep 0.2; done"
    )
}

/// Runs busybox's httpd and 20 wget requests to it (`/pod-check`) in a container of pod
/// `shop-web-7d9c4b8f6-x2x9q` started by the test's containerd (`ctr run` on `rootfs`), with the
/// CRI annotations of container `name` and `extra` ones; returns the container's id.
fn run_in_pod(dir: &Path, rootfs: &Path, name: &str, extra: &[&str]) -> String {
    let id: String = {
        let (_, out) = run(Command::new("sh").args(["-c", "head -c 32 /dev/urandom | sha256sum"]));
        out.chars().take(64).collect()
    };
    let script = http_script();
    let annotations = [
        "io.kubernetes.cri.container-type=container".to_owned(),
        format!("io.kubernetes.cri.container-name={name}"),
        "io.kubernetes.cri.sandbox-name=shop-web-7d9c4b8f6-x2x9q".to_owned(),
        "io.kubernetes.cri.sandbox-namespace=shop".to_owned(),
        format!("io.kubernetes.cri.sandbox-uid={POD_UID}"),
    ];
    let mut ctr = Command::new("ctr");
    ctr.arg("--address").arg(dir.join("c.sock")).args([
        "-n",
        "k8s.io",
        "run",
        "--rm",
        "--rootfs",
        "--net-host",
    ]);
    for a in annotations
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
    {
        ctr.args(["--annotation", a]);
    }
    ctr.arg(rootfs)
        .arg(&id)
        .args(["/bin/busybox", "sh", "-c", &script]);
    let (ok, out) = run(&mut ctr);
    assert!(ok, "ctr run failed: {out}");
    id
}

/// `process.pid` of a span's resource (an integer, or a string in OTLP's JSON mapping).
fn pid_of(span: &ztrace_e2e::otlp::OtlpSpan) -> Option<i64> {
    match &span.0["resource"]["process.pid"] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// GET `url` with curl: (status, body).
fn get(url: &str) -> (u16, String) {
    let (_, out) = run(Command::new("curl").args(["-s", "-w", "\n%{http_code}", url]));
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
#[ignore = "needs root, podman, containerd and the image of cargo xtask image; run by cargo xtask test"]
fn the_daemonset_image_traces_the_host_and_a_pod_with_its_kubernetes_names() {
    let image = image();
    let (ok, out) = run(Command::new("podman")
        .args(PODMAN_GLOBAL)
        .args(["image", "exists", &image]));
    assert!(
        ok,
        "{image} is missing: run `cargo xtask image` first ({out})"
    );
    let ds = daemonset();
    let dir = TempDir::new("k8s");
    let _containerd = start_containerd(dir.path());
    import_busybox_image(dir.path());
    let mut pods = Sandboxes {
        client: CriClient::connect(&dir.join("c.sock")).expect("a CRI client"),
        ids: Vec::new(),
    };
    let tasks = dir.path().join("state/io.containerd.runtime.v2.task");

    let mut receiver = OtlpReceiver::start();
    let health_port = free_port();
    let health = format!("127.0.0.1:{health_port}");
    let mut agent = run_agent(
        &ds,
        &[
            (CONTAINERD_TASKS, tasks.clone()),
            (CONTAINERD_SOCKET, dir.join("c.sock")),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ("ZTRACE_HEALTH", health.clone()),
            ("K8S_NODE_NAME", "node-e2e".into()),
        ],
    );
    agent
        .proc
        .wait_for_stderr("ztrace is ready", Duration::from_secs(180));
    let stderr = agent.proc.stderr();
    assert!(
        !stderr.contains("FAIL  uprobes"),
        "with the DaemonSet's capabilities every uprobe attaches:\n{stderr}"
    );
    assert!(
        !stderr.contains("without CAP_"),
        "a capability of the DaemonSet is reported missing:\n{stderr}"
    );

    // The probes' endpoints and the metrics.
    assert_eq!(get(&format!("http://{health}/healthz")).0, 200);
    assert_eq!(get(&format!("http://{health}/readyz")).0, 200);
    let metrics = wait_until(Duration::from_secs(10), || {
        let (status, page) = get(&format!("http://{health}/metrics"));
        // The kernel's counters and the queue depths come with the pipeline's first second.
        (status == 200 && page.contains("ztrace_export_queue_spans ")).then_some(page)
    })
    .expect("/metrics with the export queue's depth");
    for name in [
        "ztrace_events_read_total ",
        "ztrace_spans_exported_total ",
        "ztrace_export_errors_total ",
        "ztrace_kernel_ringbuf_full_total ",
        "ztrace_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }

    // A process on the host.
    let server = Server::python_http("127.0.0.1");
    let host_pid = server.pid();
    let url = server.url("/host-check");
    let curl = clients::curl(&[url]);
    assert!(
        !curl.transfers.is_empty(),
        "curl on the host made no request"
    );

    // Pods made over CRI as the kubelet makes them: a Deployment's pod with the
    // `app.kubernetes.io/name` label, and a DaemonSet's pod (its name alone does not tell) with
    // the label and the `resource.opentelemetry.io/service.name` annotation. The agent asks
    // containerd for their labels and annotations over CRI.
    let checkout = pods.start(
        &Pod {
            name: "checkout-5f8d7b9c4d-6wkzt",
            uid: CHECKOUT_UID,
            namespace: "shop",
            labels: &[
                ("app.kubernetes.io/name", "checkout-frontend"),
                ("pod-template-hash", "5f8d7b9c4d"),
            ],
            annotations: &[],
            log_directory: &dir.join("logs/checkout"),
        },
        "api",
    );
    let shipper = pods.start(
        &Pod {
            name: "log-agent-x7k2p",
            uid: SHIPPER_UID,
            namespace: "infra",
            labels: &[
                ("app.kubernetes.io/name", "log-agent-label"),
                ("controller-revision-hash", "6c9b8d7f5"),
                ("pod-template-generation", "1"),
            ],
            annotations: &[
                ("resource.opentelemetry.io/service.name", "log-shipper"),
                ("resource.opentelemetry.io/team", "infra-team"),
                ("kubernetes.io/config.source", "api"),
            ],
            log_directory: &dir.join("logs/shipper"),
        },
        "shipper",
    );

    // Processes in a pod that CRI does not know: containerd runs busybox's httpd and wget with
    // the annotations the kubelet's CRI calls make containerd write, without a sandbox; the
    // second container also has a pod annotation that containerd copies when its
    // `pod_annotations` setting lists it.
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "www", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub)).expect("rootfs");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
    std::fs::write(rootfs.join("www/pod-check"), "pong\n").expect("page");
    let id = run_in_pod(dir.path(), &rootfs, "web", &[]);
    let annotated = run_in_pod(
        dir.path(),
        &rootfs,
        "cart",
        &[
            "resource.opentelemetry.io/service.name=storefront",
            "resource.opentelemetry.io/team=shop-team",
        ],
    );

    let pod_http_spans = |receiver: &mut OtlpReceiver, id: &str| {
        let spans = receiver.wait_for_spans(
            1,
            |s| {
                s.resource_str("container.id") == Some(id)
                    && s.attr_str("url.path") == Some("/pod-check")
            },
            Duration::from_secs(60),
        );
        assert!(
            spans.iter().any(|s| s.kind() == Some("SPAN_KIND_CLIENT")),
            "{spans:#?}"
        );
        spans
    };
    let checkout_spans = pod_http_spans(&mut receiver, &checkout);
    eprintln!("checkout pod: {} spans checked", checkout_spans.len());
    for span in &checkout_spans {
        let r = |k: &str| span.resource_str(k);
        assert_eq!(r("service.name"), Some("checkout-frontend"), "{span:?}");
        assert_eq!(r("k8s.pod.name"), Some("checkout-5f8d7b9c4d-6wkzt"));
        assert_eq!(r("k8s.pod.uid"), Some(CHECKOUT_UID));
        assert_eq!(r("k8s.namespace.name"), Some("shop"));
        assert_eq!(r("k8s.container.name"), Some("api"));
        assert_eq!(r("k8s.node.name"), Some("node-e2e"));
        assert_eq!(r("k8s.deployment.name"), Some("checkout"));
        assert_eq!(r("k8s.replicaset.name"), Some("checkout-5f8d7b9c4d"));
    }
    let shipper_spans = pod_http_spans(&mut receiver, &shipper);
    eprintln!("log-agent pod: {} spans checked", shipper_spans.len());
    for span in &shipper_spans {
        let r = |k: &str| span.resource_str(k);
        assert_eq!(r("service.name"), Some("log-shipper"), "{span:?}");
        assert_eq!(r("team"), Some("infra-team"), "{span:?}");
        assert_eq!(r("k8s.pod.name"), Some("log-agent-x7k2p"));
        assert_eq!(r("k8s.pod.uid"), Some(SHIPPER_UID));
        assert_eq!(r("k8s.namespace.name"), Some("infra"));
        assert_eq!(r("k8s.container.name"), Some("shipper"));
        assert_eq!(r("k8s.node.name"), Some("node-e2e"));
        // Only the pod's labels tell that this is a DaemonSet's pod.
        assert_eq!(r("k8s.daemonset.name"), Some("log-agent"), "{span:?}");
    }
    let stderr = agent.proc.stderr();
    assert!(
        stderr.contains("pod labels and annotations from the container runtime over CRI"),
        "the agent did not say where pod labels come from:\n{stderr}"
    );

    let cart_spans = receiver.wait_for_spans(
        1,
        |s| {
            s.resource_str("container.id") == Some(annotated.as_str())
                && s.attr_str("url.path") == Some("/pod-check")
        },
        Duration::from_secs(60),
    );
    for span in &cart_spans {
        assert_eq!(
            span.resource_str("service.name"),
            Some("storefront"),
            "{span:?}"
        );
        assert_eq!(span.resource_str("team"), Some("shop-team"), "{span:?}");
        assert_eq!(
            span.resource_str("k8s.container.name"),
            Some("cart"),
            "{span:?}"
        );
    }
    let pod_spans = receiver.wait_for_spans(
        1,
        |s| {
            s.resource_str("container.id") == Some(id.as_str())
                && s.attr_str("url.path") == Some("/pod-check")
        },
        Duration::from_secs(60),
    );
    // wget's CLIENT spans. (busybox httpd's children, like inetd services, read the request on
    // fd 0 and answer on fd 1, two fds of one socket that the connection table keys apart: its
    // SERVER spans are not asserted.)
    assert!(
        pod_spans
            .iter()
            .any(|s| s.kind() == Some("SPAN_KIND_CLIENT")),
        "{pod_spans:#?}"
    );
    for span in &pod_spans {
        let r = |k: &str| span.resource_str(k);
        assert_eq!(r("container.id"), Some(id.as_str()), "{span:?}");
        assert_eq!(r("k8s.namespace.name"), Some("shop"));
        assert_eq!(r("k8s.container.name"), Some("web"));
        assert_eq!(r("k8s.pod.uid"), Some(POD_UID));
        assert_eq!(r("k8s.node.name"), Some("node-e2e"));
        assert_eq!(r("k8s.deployment.name"), Some("shop-web"));
        assert_eq!(r("k8s.replicaset.name"), Some("shop-web-7d9c4b8f6"));
        assert_eq!(r("service.name"), Some("shop-web"));
        assert_eq!(r("host.name"), Some("node-e2e"));
    }

    let host_spans = receiver.wait_for_spans(
        1,
        |s| s.attr_str("url.path") == Some("/host-check") && pid_of(s) == Some(i64::from(host_pid)),
        Duration::from_secs(60),
    );
    for span in &host_spans {
        assert_eq!(
            span.resource_str("k8s.pod.name"),
            None,
            "a host process has no pod: {span:?}"
        );
        assert_eq!(span.resource_str("host.name"), Some("node-e2e"));
    }
    drop(agent);
}

#[test]
#[ignore = "needs root, podman and the image of cargo xtask image; run by cargo xtask test"]
fn a_missing_capability_is_said_in_one_sentence() {
    let ds = daemonset();
    let dir = TempDir::new("k8s-caps");
    let tasks = dir.path().join("tasks");
    let tasks = [(CONTAINERD_TASKS, tasks)];
    let env = [
        ("ZTRACE_EXE", "ztrace-caps-none".to_owned()),
        ("ZTRACE_HEALTH", format!("127.0.0.1:{}", free_port())),
    ];
    let base = agent_args(&ds, &tasks, &env);
    let without = |caps: &[&str], extra: &[&str]| {
        let dropped: Vec<String> = caps.iter().map(|c| format!("--cap-add={c}")).collect();
        let mut args: Vec<String> = base
            .iter()
            .filter(|a| !dropped.contains(a))
            .cloned()
            .collect();
        assert_eq!(
            args.len() + caps.len(),
            base.len(),
            "{caps:?} are not all in the DaemonSet's list"
        );
        args.extend(extra.iter().map(|e| (*e).to_owned()));
        run_agent_with(args)
    };
    let ends_with_one_sentence = |agent: &mut PodmanContainer, needle: &str| {
        let status = agent.proc.wait_exit(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| !s.success()),
            "ztrace started without {needle}: {}",
            agent.proc.stderr()
        );
        let stderr = agent.proc.stderr();
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("ztrace: "))
            .collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(needle), "{stderr}");
    };
    // Unconfined seccomp: the capability, not the runtime's filter, is what is missing.
    // (CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON: it goes too.)
    let mut agent = without(
        &["BPF", "SYS_ADMIN"],
        &["--security-opt=seccomp=unconfined"],
    );
    ends_with_one_sentence(&mut agent, "lacks CAP_BPF");
    drop(agent);
    let mut agent = without(
        &["PERFMON", "SYS_ADMIN"],
        &["--security-opt=seccomp=unconfined"],
    );
    ends_with_one_sentence(&mut agent, "lacks CAP_PERFMON");
    drop(agent);
    // The runtime's default seccomp profile refuses bpf() without CAP_SYS_ADMIN.
    let mut agent = without(&["SYS_ADMIN"], &[]);
    ends_with_one_sentence(&mut agent, "seccomp profile blocks it");
    drop(agent);
    // Unconfined, the agent starts without CAP_SYS_ADMIN and says what is lost: the uprobes.
    let mut agent = without(&["SYS_ADMIN"], &["--security-opt=seccomp=unconfined"]);
    agent
        .proc
        .wait_for_stderr("ztrace is ready", Duration::from_secs(180));
    let stderr = agent.proc.stderr();
    assert!(
        stderr.contains("without CAP_SYS_ADMIN the kernel refuses uprobes"),
        "{stderr}"
    );
    // NET_ADMIN is there: the socket map was made (whatever else keeps sock_ops off here).
    assert!(!stderr.contains("CAP_NET_ADMIN"), "{stderr}");
    drop(agent);
    // Without NET_ADMIN as well, the kernel creates no socket map and loads no network
    // program: ztrace starts all the same, and its attach table names the capability.
    let mut agent = without(
        &["SYS_ADMIN", "NET_ADMIN"],
        &["--security-opt=seccomp=unconfined"],
    );
    agent
        .proc
        .wait_for_stderr("ztrace is ready", Duration::from_secs(180));
    let stderr = agent.proc.stderr();
    let line = |program: &str| {
        stderr
            .lines()
            .find(|l| l.contains(&format!("optional  {program}")))
            .unwrap_or_default()
            .to_owned()
    };
    // (sock_ops fails too: for the capability, or, in this container, for want of a cgroup v2
    // hierarchy to attach to.)
    let (sk_msg, sock_ops) = (line("sk_msg"), line("sock_ops"));
    assert!(
        sk_msg.starts_with("  FAIL") && sk_msg.contains("only with CAP_NET_ADMIN"),
        "{stderr}"
    );
    assert!(sock_ops.starts_with("  FAIL"), "{stderr}");
    assert!(!stderr.contains("seccomp"), "{stderr}");
    drop(agent);
    let mut agent = without(&["SYS_PTRACE"], &[]);
    agent
        .proc
        .wait_for_stderr("ztrace is ready", Duration::from_secs(180));
    assert!(
        agent.proc.stderr().contains("without CAP_SYS_PTRACE"),
        "{}",
        agent.proc.stderr()
    );
}
