//! The few messages of the Kubernetes Container Runtime Interface that ztrace reads, written by
//! hand as prost messages.
//!
//! They follow `k8s.io/cri-api/pkg/apis/runtime/v1/api.proto` (package `runtime.v1`, served by
//! containerd 1.6+ and CRI-O 1.20+): the same field numbers and types; the fields ztrace does
//! not read are left out, which protobuf decoding skips.

use std::collections::HashMap;

/// `runtime.v1.RuntimeService`'s path prefix.
pub const SERVICE: &str = "/runtime.v1.RuntimeService/";

/// `VersionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRequest {
    /// Version of the kubelet's runtime API.
    #[prost(string, tag = "1")]
    pub version: String,
}

/// `VersionResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionResponse {
    #[prost(string, tag = "1")]
    pub version: String,
    /// `containerd`, `cri-o`, ...
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    #[prost(string, tag = "4")]
    pub runtime_api_version: String,
}

/// `PodSandboxStateValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStateValue {
    /// `PodSandboxState`: `SANDBOX_READY` = 0, `SANDBOX_NOTREADY` = 1.
    #[prost(int32, tag = "1")]
    pub state: i32,
}

/// `PodSandboxFilter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxFilter {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub state: Option<PodSandboxStateValue>,
    #[prost(map = "string, string", tag = "3")]
    pub label_selector: HashMap<String, String>,
}

/// `ListPodSandboxRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub filter: Option<PodSandboxFilter>,
}

/// `ListPodSandboxResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxResponse {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<PodSandbox>,
}

/// `PodSandboxMetadata`: the pod's name, uid and namespace as the kubelet gave them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
}

/// `PodSandbox`: one pod sandbox with the pod's labels and annotations.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandbox {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<PodSandboxMetadata>,
    /// `PodSandboxState`: `SANDBOX_READY` = 0, `SANDBOX_NOTREADY` = 1.
    #[prost(int32, tag = "3")]
    pub state: i32,
    /// Creation time, in nanoseconds since the epoch.
    #[prost(int64, tag = "4")]
    pub created_at: i64,
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "6")]
    pub annotations: HashMap<String, String>,
    #[prost(string, tag = "7")]
    pub runtime_handler: String,
}
