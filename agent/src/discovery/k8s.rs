//! Kubernetes names of a containerized process: from the container runtime's own record of the
//! container, the pod's labels and annotations (from the runtime over CRI, see [`super::cri`]),
//! and the workload's name from the controllers' labels or, without them, from the pod name.
//!
//! The kubelet hands the pod name, namespace and container name to the runtime, which keeps them
//! as annotations (containerd: `io.kubernetes.cri.*` in the OCI bundle's `config.json`; CRI-O:
//! `io.kubernetes.pod.*` / `io.kubernetes.container.name` in its `config.json`) or labels (Docker:
//! `Config.Labels` in `config.v2.json`). Those are exact.
//!
//! The workload (Deployment, StatefulSet, ...) is exact where the pod's labels name it
//! ([`workload_of`]): the labels that the controllers put on their pods (`pod-template-hash`,
//! `statefulset.kubernetes.io/pod-name`, `pod-template-generation`, `batch.kubernetes.io/job-name`)
//! say which controller made the pod, and its name is the pod's generated name without the
//! suffix that controller adds. Without labels the kind is inferred from the pod name's suffix
//! ([`workload_attributes`]): a Deployment's pods carry the ReplicaSet's hash, a CronJob's the
//! scheduled minute, a StatefulSet's an ordinal; a DaemonSet's, a Job's and a bare
//! ReplicaSet's look alike and get no kind. A CronJob is always inferred from its Job's name.
//!
//! The pod's `resource.opentelemetry.io/*` annotations come from the runtime's record where the
//! runtime copies them into it (containerd, for those its `pod_annotations` setting lists), and
//! from CRI.
//!
//! Not done: owner references (only the API server has them): a pod made by a controller that
//! sets none of those labels gets the inferred workload.

use serde_json::Value;

/// Kubernetes names of one container; each is `None` when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct K8sNames {
    pub namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub container_name: Option<String>,
    /// The pod's `resource.opentelemetry.io/<key>` annotations that the runtime copied into the
    /// container's record, as `(<key>, value)` (containerd does for the annotations its
    /// `pod_annotations` setting lists; see [`RESOURCE_ANNOTATION_PREFIX`]).
    pub resource_annotations: Vec<(String, String)>,
    /// The pod's labels, sorted by key, when a source gave them (see [`super::cri`]).
    pub labels: Vec<(String, String)>,
}

/// Pod annotations that set resource attributes: `resource.opentelemetry.io/service.name: cart`
/// makes `service.name` `cart` (the OpenTelemetry rule for Kubernetes).
pub const RESOURCE_ANNOTATION_PREFIX: &str = "resource.opentelemetry.io/";

impl K8sNames {
    /// The value of annotation `resource.opentelemetry.io/<key>`, when the record has it.
    pub fn resource_annotation(&self, key: &str) -> Option<&str> {
        self.resource_annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the pod's label `key`, when known.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Adds what the runtime said over CRI about the process's pod: names the container's
    /// record lacks, the pod's labels, and its `resource.opentelemetry.io/*` annotations that
    /// the record does not have already.
    pub fn add_pod_record(&mut self, pod: &super::cri::PodRecord) {
        let fill = |slot: &mut Option<String>, value: &str| {
            if slot.is_none() && !value.is_empty() {
                *slot = Some(value.to_owned());
            }
        };
        fill(&mut self.namespace, &pod.namespace);
        fill(&mut self.pod_name, &pod.name);
        fill(&mut self.pod_uid, &pod.uid);
        self.labels = pod.labels.clone();
        for (key, value) in &pod.resource_annotations {
            if self.resource_annotation(key).is_none() {
                self.resource_annotations.push((key.clone(), value.clone()));
            }
        }
    }

    /// The workload of the pod, exact from its labels when they name it, else inferred from the
    /// pod name (see [`workload_of`]).
    pub fn workload(&self) -> Option<Workload> {
        workload_of(self.pod_name.as_deref()?, &self.labels)
    }

    /// True when no name is known.
    pub fn is_empty(&self) -> bool {
        self.namespace.is_none()
            && self.pod_name.is_none()
            && self.pod_uid.is_none()
            && self.container_name.is_none()
    }
}

/// Where the container runtimes keep a container's record, relative to the host's root, with
/// `{id}` for the container id.
pub const RUNTIME_CONFIG_PATHS: [&str; 4] = [
    "run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json",
    "run/containers/storage/overlay-containers/{id}/userdata/config.json",
    "var/lib/containers/storage/overlay-containers/{id}/userdata/config.json",
    "var/lib/docker/containers/{id}/config.v2.json",
];

/// Reads the Kubernetes names from a runtime's container record (any of
/// [`RUNTIME_CONFIG_PATHS`]); `None` when the bytes are not JSON or name no pod.
pub fn names_from_runtime_config(json: &[u8]) -> Option<K8sNames> {
    let doc: Value = serde_json::from_slice(json).ok()?;
    let map = doc
        .get("annotations")
        .or_else(|| doc.get("Config").and_then(|c| c.get("Labels")))?
        .as_object()?;
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| map.get(*k).and_then(Value::as_str))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    // A pod's sandbox ("pause") container has pod names but is not an application container.
    let sandbox = get(&["io.kubernetes.cri.container-type"]).as_deref() == Some("sandbox")
        || get(&["io.kubernetes.docker.type"]).as_deref() == Some("podsandbox");
    let resource_annotations = map
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.strip_prefix(RESOURCE_ANNOTATION_PREFIX)?,
                v.as_str()?.trim(),
            ))
        })
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let names = K8sNames {
        namespace: get(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]),
        pod_name: get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
        pod_uid: get(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"]),
        container_name: if sandbox {
            None
        } else {
            get(&[
                "io.kubernetes.cri.container-name",
                "io.kubernetes.container.name",
            ])
        },
        resource_annotations,
        labels: Vec::new(),
    };
    (names.pod_name.is_some() || names.container_name.is_some()).then_some(names)
}

/// The characters of Kubernetes' generated name suffixes (`rand.SafeEncodeString`).
fn is_generated(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len())
        && s.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// The workload name in a pod name, when the pod name ends with a suffix that a controller
/// generates:
///
/// - Deployment: `<name>-<pod-template-hash>-<5>` → `<name>`;
/// - CronJob: `<name>-<scheduled minutes>-<5>` → `<name>`;
/// - DaemonSet, Job, ReplicaSet: `<name>-<5>` → `<name>`;
/// - StatefulSet: `<name>-<ordinal>` → `<name>`.
///
/// Returns `None` for any other pod name (a bare pod is its own workload). The suffixes use a
/// restricted alphabet (no vowels, no `0`, `1`, `3`), so ordinary words are rarely mistaken.
pub fn workload_from_pod_name(pod: &str) -> Option<&str> {
    let (head, last) = pod.rsplit_once('-')?;
    if head.is_empty() {
        return None;
    }
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return Some(head);
    }
    if !is_generated(last, 5..=5) {
        return None;
    }
    if let Some((name, middle)) = head.rsplit_once('-') {
        let cron = middle.len() >= 8 && middle.bytes().all(|b| b.is_ascii_digit());
        if !name.is_empty() && (cron || is_generated(middle, 6..=10)) {
            return Some(name);
        }
    }
    Some(head)
}

/// The workload attributes a pod name tells exactly enough, with the names they carry:
///
/// - `<name>-<pod-template-hash>-<5>`: `k8s.replicaset.name` `<name>-<hash>` and
///   `k8s.deployment.name` `<name>`;
/// - `<name>-<scheduled minutes>-<5>`: `k8s.job.name` `<name>-<minutes>` and `k8s.cronjob.name`
///   `<name>`;
/// - `<name>-<ordinal>`: `k8s.statefulset.name` `<name>`.
///
/// A bare `<name>-<5>` could be a DaemonSet's, a Job's or a ReplicaSet's pod: no attribute (its
/// `<name>` still names the service, see [`workload_from_pod_name`]).
pub fn workload_attributes(pod: &str) -> Vec<(&'static str, &str)> {
    let Some(workload) = workload_from_pod_name(pod) else {
        return Vec::new();
    };
    let Some((parent, last)) = pod.rsplit_once('-') else {
        return Vec::new();
    };
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return vec![("k8s.statefulset.name", workload)];
    }
    if parent == workload {
        return Vec::new();
    }
    let middle = &parent[workload.len() + 1..];
    if middle.bytes().all(|b| b.is_ascii_digit()) {
        vec![("k8s.job.name", parent), ("k8s.cronjob.name", workload)]
    } else {
        vec![
            ("k8s.replicaset.name", parent),
            ("k8s.deployment.name", workload),
        ]
    }
}

/// A pod's workload: the attributes naming it and the name that stands for it in
/// `service.name` (the top-most controller: the Deployment of a ReplicaSet, the CronJob of a
/// Job).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The controller's name, or the pod's own name for a bare pod.
    pub name: String,
    /// `k8s.deployment.name` and the like, top-most last.
    pub attributes: Vec<(&'static str, String)>,
    /// True when the pod's labels said which controller made it.
    pub from_labels: bool,
}

/// The pod name without its last `-<suffix>` when the rest ends with `-<part>`.
fn strip_suffix_after<'a>(pod: &'a str, part: &str) -> Option<&'a str> {
    let (head, _) = pod.rsplit_once('-')?;
    let name = head.strip_suffix(part)?.strip_suffix('-')?;
    (!name.is_empty()).then_some(head)
}

/// The pod's workload: exact when the pod's `labels` carry a controller's label, else inferred
/// from the pod name as [`workload_from_pod_name`] and [`workload_attributes`] do; a pod with
/// neither is its own workload.
///
/// The controllers' labels:
/// - `pod-template-hash: <h>` (Deployment): the pod is `<replicaset>-<5>` and the ReplicaSet is
///   `<deployment>-<h>`;
/// - `batch.kubernetes.io/job-name` or `job-name` (Job): the Job's name; a Job named
///   `<name>-<scheduled minutes>` is a CronJob's (the CronJob itself is inferred);
/// - `statefulset.kubernetes.io/pod-name` (StatefulSet): the pod is `<statefulset>-<ordinal>`;
/// - `pod-template-generation` with `controller-revision-hash` (DaemonSet): the pod is
///   `<daemonset>-<5>`.
pub fn workload_of(pod: &str, labels: &[(String, String)]) -> Option<Workload> {
    let label = |key: &str| {
        labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let exact = |name: &str, attributes: Vec<(&'static str, String)>| {
        Some(Workload {
            name: name.to_owned(),
            attributes,
            from_labels: true,
        })
    };
    if let Some(hash) = label("pod-template-hash") {
        if let Some(replicaset) = strip_suffix_after(pod, hash) {
            let deployment = &replicaset[..replicaset.len() - hash.len() - 1];
            return exact(
                deployment,
                vec![
                    ("k8s.replicaset.name", replicaset.to_owned()),
                    ("k8s.deployment.name", deployment.to_owned()),
                ],
            );
        }
    }
    if let Some(job) = label("batch.kubernetes.io/job-name").or_else(|| label("job-name")) {
        let mut attributes = vec![("k8s.job.name", job.to_owned())];
        let cronjob = job
            .rsplit_once('-')
            .filter(|(c, minutes)| {
                !c.is_empty() && minutes.len() >= 8 && minutes.bytes().all(|b| b.is_ascii_digit())
            })
            .map(|(c, _)| c);
        if let Some(cronjob) = cronjob {
            attributes.push(("k8s.cronjob.name", cronjob.to_owned()));
        }
        return exact(cronjob.unwrap_or(job), attributes);
    }
    if label("statefulset.kubernetes.io/pod-name").is_some() {
        if let Some((set, ordinal)) = pod.rsplit_once('-') {
            if !set.is_empty() && !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit())
            {
                return exact(set, vec![("k8s.statefulset.name", set.to_owned())]);
            }
        }
    }
    if label("pod-template-generation").is_some() && label("controller-revision-hash").is_some() {
        if let Some((set, _)) = pod.rsplit_once('-').filter(|(s, _)| !s.is_empty()) {
            return exact(set, vec![("k8s.daemonset.name", set.to_owned())]);
        }
    }
    let attributes = workload_attributes(pod)
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
    Some(Workload {
        name: workload_from_pod_name(pod).unwrap_or(pod).to_owned(),
        attributes,
        from_labels: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_containerd_annotations() {
        let json = br#"{"ociVersion":"1.1.0","process":{"env":["SECRET=x"]},"annotations":{
            "io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.container-name":"api",
            "io.kubernetes.cri.sandbox-name":"orders-7d9c4b8f6-x2x9q",
            "io.kubernetes.cri.sandbox-namespace":"shop",
            "io.kubernetes.cri.sandbox-uid":"0c5a4b1e-2d4e-4c1a-9d9e-0123456789ab",
            "resource.opentelemetry.io/service.name":"orders-api",
            "resource.opentelemetry.io/":"no key","resource.opentelemetry.io/team":" "}}"#;
        assert_eq!(
            names_from_runtime_config(json),
            Some(K8sNames {
                namespace: Some("shop".into()),
                pod_name: Some("orders-7d9c4b8f6-x2x9q".into()),
                pod_uid: Some("0c5a4b1e-2d4e-4c1a-9d9e-0123456789ab".into()),
                container_name: Some("api".into()),
                resource_annotations: vec![("service.name".into(), "orders-api".into())],
                labels: Vec::new(),
            })
        );
    }

    #[test]
    fn reads_crio_and_docker_records() {
        let crio = br#"{"annotations":{"io.kubernetes.container.name":"web",
            "io.kubernetes.pod.name":"web-0","io.kubernetes.pod.namespace":"default"}}"#;
        let names = names_from_runtime_config(crio);
        assert_eq!(
            names.as_ref().and_then(|n| n.container_name.as_deref()),
            Some("web")
        );
        assert_eq!(
            names.as_ref().and_then(|n| n.pod_name.as_deref()),
            Some("web-0")
        );
        let docker = br#"{"Name":"/k8s_web_web-0","Config":{"Labels":{
            "io.kubernetes.container.name":"web","io.kubernetes.pod.name":"web-0"}}}"#;
        assert_eq!(
            names_from_runtime_config(docker),
            names.map(|n| K8sNames {
                namespace: None,
                ..n
            })
        );
    }

    #[test]
    fn ignores_sandboxes_and_plain_containers() {
        let sandbox = br#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox",
            "io.kubernetes.cri.sandbox-name":"orders-7d9c4b8f6-x2x9q"}}"#;
        let names = names_from_runtime_config(sandbox);
        assert_eq!(names.and_then(|n| n.container_name), None);
        assert_eq!(
            names_from_runtime_config(br#"{"Name":"/web","Config":{"Labels":{}}}"#),
            None
        );
        assert_eq!(names_from_runtime_config(br#"{"annotations":{}}"#), None);
        assert_eq!(names_from_runtime_config(b"not json"), None);
        assert_eq!(names_from_runtime_config(b"[1,2]"), None);
    }

    #[test]
    fn workload_attributes_only_where_the_suffix_tells_the_kind() {
        assert_eq!(
            workload_attributes("checkout-api-5f8d7b9c4d-6wkzt"),
            [
                ("k8s.replicaset.name", "checkout-api-5f8d7b9c4d"),
                ("k8s.deployment.name", "checkout-api")
            ]
        );
        assert_eq!(
            workload_attributes("backup-28934215-q2c7x"),
            [
                ("k8s.job.name", "backup-28934215"),
                ("k8s.cronjob.name", "backup")
            ]
        );
        assert_eq!(
            workload_attributes("postgres-0"),
            [("k8s.statefulset.name", "postgres")]
        );
        assert!(workload_attributes("node-exporter-x7k2p").is_empty());
        assert!(workload_attributes("redis").is_empty());
    }

    #[test]
    fn infers_workloads_from_pod_names() {
        let cases = [
            ("orders-7d9c4b8f6-x2x9q", Some("orders")),
            ("checkout-api-5f8d7b9c4d-6wkzt", Some("checkout-api")),
            ("node-exporter-x7k2p", Some("node-exporter")),
            ("backup-28934215-q2c7x", Some("backup")),
            ("postgres-0", Some("postgres")),
            ("kafka-broker-12", Some("kafka-broker")),
            ("redis", None),
            ("my-app-redis", None),
            ("api-proxy", None),
            ("-x7k2p", None),
            ("web-", None),
            ("", None),
        ];
        for (pod, want) in cases {
            assert_eq!(workload_from_pod_name(pod), want, "{pod}");
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_controllers_labels_name_the_workload_exactly() {
        let deployment = workload_of(
            "checkout-api-5f8d7b9c4d-6wkzt",
            &labels(&[("app", "x"), ("pod-template-hash", "5f8d7b9c4d")]),
        )
        .expect("workload");
        assert_eq!(deployment.name, "checkout-api");
        assert!(deployment.from_labels);
        assert_eq!(
            deployment.attributes,
            [
                ("k8s.replicaset.name", "checkout-api-5f8d7b9c4d".to_owned()),
                ("k8s.deployment.name", "checkout-api".to_owned())
            ]
        );
        // A DaemonSet's pod looks like a bare ReplicaSet's by name; its labels tell.
        let daemonset = workload_of(
            "node-exporter-x7k2p",
            &labels(&[
                ("controller-revision-hash", "6c9b8d7f5"),
                ("pod-template-generation", "3"),
            ]),
        )
        .expect("workload");
        assert_eq!(
            daemonset.attributes,
            [("k8s.daemonset.name", "node-exporter".to_owned())]
        );
        let job = workload_of(
            "migrate-xk2p4",
            &labels(&[("batch.kubernetes.io/job-name", "migrate")]),
        )
        .expect("workload");
        assert_eq!((job.name.as_str(), job.attributes.len()), ("migrate", 1));
        let cron = workload_of(
            "backup-28934215-q2c7x",
            &labels(&[("job-name", "backup-28934215")]),
        )
        .expect("workload");
        assert_eq!(cron.name, "backup");
        assert_eq!(
            cron.attributes,
            [
                ("k8s.job.name", "backup-28934215".to_owned()),
                ("k8s.cronjob.name", "backup".to_owned())
            ]
        );
        let set = workload_of(
            "db-12",
            &labels(&[("statefulset.kubernetes.io/pod-name", "db-12")]),
        )
        .expect("workload");
        assert_eq!(set.attributes, [("k8s.statefulset.name", "db".to_owned())]);
    }

    #[test]
    fn without_labels_or_with_mismatching_ones_the_workload_is_inferred() {
        let inferred = workload_of("orders-7d9c4b8f6-x2x9q", &[]).expect("workload");
        assert_eq!(inferred.name, "orders");
        assert!(!inferred.from_labels);
        assert_eq!(inferred.attributes.len(), 2);
        // A hash that is not in the pod's name is not believed.
        let odd = workload_of(
            "orders-x2x9q",
            &labels(&[("pod-template-hash", "7d9c4b8f6")]),
        )
        .expect("workload");
        assert!(!odd.from_labels);
        let bare = workload_of("debug", &[]).expect("workload");
        assert_eq!((bare.name.as_str(), bare.attributes.len()), ("debug", 0));
    }
}
