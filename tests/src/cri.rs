//! A small client of the Kubernetes Container Runtime Interface, to make pods the way the
//! kubelet does (`RunPodSandbox`, `CreateContainer`, `StartContainer`) on a real containerd.
//!
//! The messages are written by hand with prost and follow `k8s.io/cri-api/pkg/apis/runtime/v1/
//! api.proto` (package `runtime.v1`), with only the fields these tests set; the calls block
//! (each on the client's own tokio runtime).

use std::{collections::HashMap, path::Path, time::Duration};

use tonic::{
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint, Uri},
};

/// `NamespaceMode`.
pub const NAMESPACE_CONTAINER: i32 = 1;
pub const NAMESPACE_NODE: i32 = 2;

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

#[derive(Clone, PartialEq, prost::Message)]
pub struct NamespaceOption {
    #[prost(int32, tag = "1")]
    pub network: i32,
    #[prost(int32, tag = "2")]
    pub pid: i32,
    #[prost(int32, tag = "3")]
    pub ipc: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxSandboxSecurityContext {
    #[prost(message, optional, tag = "1")]
    pub namespace_options: Option<NamespaceOption>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandboxConfig {
    #[prost(string, tag = "1")]
    pub cgroup_parent: String,
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxSandboxSecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    pub hostname: String,
    #[prost(string, tag = "3")]
    pub log_directory: String,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodSandboxConfig>,
    #[prost(string, tag = "2")]
    pub runtime_handler: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxResponse {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxIdRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageSpec {
    #[prost(string, tag = "1")]
    pub image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerSecurityContext {
    #[prost(message, optional, tag = "3")]
    pub namespace_options: Option<NamespaceOption>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerConfig {
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxContainerSecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "2")]
    pub image: Option<ImageSpec>,
    #[prost(string, repeated, tag = "3")]
    pub command: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub args: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    pub envs: Vec<KeyValue>,
    #[prost(map = "string, string", tag = "9")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "10")]
    pub annotations: HashMap<String, String>,
    #[prost(string, tag = "11")]
    pub log_path: String,
    #[prost(message, optional, tag = "15")]
    pub linux: Option<LinuxContainerConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(message, optional, tag = "2")]
    pub config: Option<ContainerConfig>,
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerResponse {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerIdRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

/// A pod as the kubelet describes it to the runtime: host network (no CNI needed), its own
/// pid namespace per container, under the kubelet's cgroup layout.
pub struct Pod<'a> {
    pub name: &'a str,
    pub uid: &'a str,
    pub namespace: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub annotations: &'a [(&'a str, &'a str)],
    pub log_directory: &'a Path,
}

impl Pod<'_> {
    /// The sandbox config the kubelet would send (it adds the `io.kubernetes.pod.*` labels).
    pub fn config(&self) -> PodSandboxConfig {
        let mut labels: HashMap<String, String> = self
            .labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.insert("io.kubernetes.pod.name".into(), self.name.into());
        labels.insert("io.kubernetes.pod.namespace".into(), self.namespace.into());
        labels.insert("io.kubernetes.pod.uid".into(), self.uid.into());
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.into(),
                uid: self.uid.into(),
                namespace: self.namespace.into(),
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: self.log_directory.display().to_string(),
            labels,
            annotations: self
                .annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{}", self.uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                }),
            }),
        }
    }
}

fn host_network() -> NamespaceOption {
    NamespaceOption {
        network: NAMESPACE_NODE,
        pid: NAMESPACE_CONTAINER,
        ipc: 0,
    }
}

/// A blocking CRI client on a unix socket.
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    grpc: tonic::client::Grpc<Channel>,
}

impl CriClient {
    /// Connects to the runtime listening on `socket`.
    pub fn connect(socket: &Path) -> Result<CriClient, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let path = socket.to_path_buf();
        let channel = runtime
            .block_on(
                Endpoint::from_static("http://cri.invalid")
                    .connect_timeout(Duration::from_secs(10))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    })),
            )
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        Ok(CriClient {
            runtime,
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    fn call<Req, Resp>(&mut self, method: &str, request: Req) -> Result<Resp, String>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let grpc = &mut self.grpc;
        let path = PathAndQuery::try_from(format!("/runtime.v1.RuntimeService/{method}"))
            .map_err(|e| e.to_string())?;
        self.runtime.block_on(async {
            grpc.ready().await.map_err(|e| format!("{method}: {e}"))?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            let call = grpc.unary(tonic::Request::new(request), path, codec);
            tokio::time::timeout(Duration::from_secs(60), call)
                .await
                .map_err(|_| format!("{method}: no answer in 60 s"))?
                .map(tonic::Response::into_inner)
                .map_err(|status| format!("{method}: {status}"))
        })
    }

    /// `RunPodSandbox`: returns the sandbox's id.
    pub fn run_pod_sandbox(&mut self, config: PodSandboxConfig) -> Result<String, String> {
        let response: RunPodSandboxResponse = self.call(
            "RunPodSandbox",
            RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            },
        )?;
        Ok(response.pod_sandbox_id)
    }

    /// `CreateContainer` of container `name` running `command` from `image` in the sandbox,
    /// then `StartContainer`; returns the container's id.
    pub fn start_container(
        &mut self,
        sandbox_id: &str,
        sandbox: &PodSandboxConfig,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String, String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
            }),
            command: command.iter().map(|c| (*c).to_owned()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                }),
            }),
            ..ContainerConfig::default()
        };
        let created: CreateContainerResponse = self.call(
            "CreateContainer",
            CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox.clone()),
            },
        )?;
        let _: Empty = self.call(
            "StartContainer",
            ContainerIdRequest {
                container_id: created.container_id.clone(),
            },
        )?;
        Ok(created.container_id)
    }

    /// `StopPodSandbox` then `RemovePodSandbox` (which removes its containers too).
    pub fn remove_pod_sandbox(&mut self, sandbox_id: &str) -> Result<(), String> {
        let request = PodSandboxIdRequest {
            pod_sandbox_id: sandbox_id.into(),
        };
        let _: Empty = self.call("StopPodSandbox", request.clone())?;
        let _: Empty = self.call("RemovePodSandbox", request)?;
        Ok(())
    }
}
