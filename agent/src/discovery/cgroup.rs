//! Container and pod identity from the text of `/proc/PID/cgroup`.
//!
//! Recognizes the cgroup paths that Docker, containerd (CRI and plain), CRI-O, Podman and the
//! kubelet create, with the cgroupfs and systemd drivers, on cgroup v1 and v2: the container id
//! is the 64-hex-digit token of the deepest path segment that has one (`docker-<id>.scope`,
//! `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`, `/docker/<id>`,
//! `...slice:cri-containerd:<id>`); the pod uid comes from a `pod<uid>` segment.
//!
//! The paths are relative to the *reader's* cgroup namespace: an agent in its own cgroup
//! namespace still sees the ids (behind `/..` segments), but a process that reads its own
//! `/proc/self/cgroup` inside a container usually sees `0::/`, and nothing is found.

use crate::spans::is_uuid;

/// What the cgroup paths of a process say about its container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    /// The 64-hex-digit container id (lower case).
    pub container_id: Option<String>,
    /// The Kubernetes pod uid (`8-4-4-4-12` hex), from a `pod<uid>` segment under `kubepods`.
    pub pod_uid: Option<String>,
    /// A path runs through the kubelet's `kubepods` hierarchy.
    pub kubepods: bool,
}

/// Parses `/proc/PID/cgroup` (`hierarchy-id:controllers:path` lines).
pub fn parse_cgroup(text: &str) -> CgroupInfo {
    let mut info = CgroupInfo::default();
    for line in text.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let mut in_kubepods = false;
        for segment in path.split('/') {
            if segment.starts_with("kubepods") {
                in_kubepods = true;
            }
            if in_kubepods && info.pod_uid.is_none() {
                info.pod_uid = pod_uid(segment);
            }
        }
        info.kubepods |= in_kubepods;
        if info.container_id.is_none() {
            info.container_id = path.split('/').rev().find_map(container_id);
        }
    }
    info
}

/// The container id in one path segment, unless the segment belongs to a runtime's monitor
/// process (`crio-conmon-<id>.scope`) rather than to the container.
fn container_id(segment: &str) -> Option<String> {
    if segment.contains("conmon") {
        return None;
    }
    segment
        .split(|c: char| !c.is_ascii_hexdigit())
        .rev()
        .find(|token| token.len() == 64)
        .map(str::to_ascii_lowercase)
}

/// The pod uid of a `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice`
/// (systemd) segment.
fn pod_uid(segment: &str) -> Option<String> {
    let at = segment.rfind("pod")?;
    let uid = segment[at + 3..]
        .trim_end_matches(".slice")
        .replace('_', "-");
    is_uuid(&uid).then(|| uid.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f";
    const UID: &str = "0c5a4b1e-2d4e-4c1a-9d9e-0123456789ab";
    const UID_SYSTEMD: &str = "0c5a4b1e_2d4e_4c1a_9d9e_0123456789ab";

    fn id_of(text: &str) -> Option<String> {
        parse_cgroup(text).container_id
    }

    #[test]
    fn finds_container_ids() {
        let cases = [
            // Docker, cgroup v1 (cgroupfs driver).
            format!("12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n"),
            // Docker, cgroup v2 (systemd driver).
            format!("0::/system.slice/docker-{ID}.scope\n"),
            // Kubernetes + containerd, cgroup v1, cgroupfs driver.
            format!("11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n"),
            // Kubernetes + containerd, cgroup v2, systemd driver.
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
            ),
            // Kubernetes + containerd, cgroup v1, systemd driver.
            format!("1:name=systemd:/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice:cri-containerd:{ID}\n"),
            // CRI-O.
            format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/crio-{ID}.scope\n"),
            // Podman, rootful and rootless.
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"),
            // Seen from another cgroup namespace.
            format!("0::/../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"),
            // Upper-case hex is normalized.
            format!("0::/docker/{}\n", ID.to_ascii_uppercase()),
        ];
        for text in cases {
            assert_eq!(id_of(&text).as_deref(), Some(ID), "{text}");
        }
    }

    #[test]
    fn finds_no_container_outside_containers() {
        let cases = [
            "0::/\n",
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/system.slice/sshd.service\n",
            "12:pids:/user.slice\n1:name=systemd:/init.scope\n",
            // CRI-O's monitor process is not the container.
            "0::/machine.slice/crio-conmon-3f4b0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f.scope\n",
            // 63 and 65 hex digits.
            "0::/docker/3f4b0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7\n",
            "0::/docker/3f4b0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f0\n",
            "",
            "garbage",
        ];
        for text in cases {
            assert_eq!(id_of(text), None, "{text}");
        }
    }

    #[test]
    fn finds_pods() {
        let v1 = parse_cgroup(&format!(
            "11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n"
        ));
        assert_eq!(
            v1,
            CgroupInfo {
                container_id: Some(ID.into()),
                pod_uid: Some(UID.into()),
                kubepods: true
            }
        );
        let v2 = parse_cgroup(&format!(
            "0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
        ));
        assert_eq!(v2.pod_uid.as_deref(), Some(UID));
        assert!(v2.kubepods);
        let docker = parse_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert!(!docker.kubepods);
        assert_eq!(docker.pod_uid, None);
        // A `pod` segment outside `kubepods` is not a pod.
        assert_eq!(parse_cgroup(&format!("0::/pod{UID}/x\n")).pod_uid, None);
    }
}
