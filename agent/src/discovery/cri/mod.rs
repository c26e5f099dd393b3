//! Pod labels and annotations from the node's container runtime over CRI, the Kubernetes
//! Container Runtime Interface (`runtime.v1.RuntimeService/ListPodSandbox` on containerd's or
//! CRI-O's socket).
//!
//! Why this source: the kubelet hands every pod's labels and annotations to the runtime when it
//! creates the pod's sandbox, and the runtime must return them unchanged. Asking the runtime is
//! node-local and needs no RBAC, no service-account token and no API server, and it answers
//! for exactly the pods of this node. The API server would also give owner references, but
//! would need a token, a ClusterRole and a watch per node; the kubelet's read-only port is off
//! on current clusters. What CRI does not give: owner references, so a workload's name comes
//! from the controllers' labels (see [`super::k8s::workload_of`]).
//!
//! [`PodDirectory`] keeps the pods of the last `ListPodSandbox` by pod uid. An unknown uid
//! asks the runtime again (at most every [`MIN_REFRESH`]), waiting at most [`WAIT`] in all for
//! a list *asked for after* the uid was missed: the kubelet makes a pod's sandbox before its
//! containers, so that list has the pod, and a short-lived process (a `wget` that lives 50 ms)
//! is described with its pod's names although a list asked for just before its pod existed
//! was still on its way. The calls run on a thread of their own, so a runtime that hangs
//! delays nothing beyond that wait. The runtime's socket is the first of [`DEFAULT_SOCKETS`] that exists (or
//! `--cri-socket`); nothing is started until a process in a pod is seen. When no socket exists
//! or the runtime refuses, one line says so and the Kubernetes names come from the runtime's
//! records alone, as without this module; the socket is tried again every [`RETRY`].
//!
//! Not done: watching the runtime's events (a pod whose labels change after its sandbox was
//! made keeps the labels the kubelet passed at creation: labels changed later with
//! `kubectl label` are not seen, as the runtime never sees them either).

pub mod proto;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use tonic::{
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint, Uri},
};

use self::proto::{ListPodSandboxRequest, PodSandbox, VersionRequest, VersionResponse};
use super::k8s::RESOURCE_ANNOTATION_PREFIX;

/// Where the runtimes listen, in the order tried: containerd, then CRI-O.
pub const DEFAULT_SOCKETS: [&str; 3] = [
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
];

/// Least time between two `ListPodSandbox` calls.
pub const MIN_REFRESH: Duration = Duration::from_millis(200);
/// Longest the caller waits for an answer; a later answer is taken on the next lookup.
pub const WAIT: Duration = Duration::from_millis(500);
/// Longest one call may take on the runtime's side.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Time before a failed or absent runtime is tried again.
pub const RETRY: Duration = Duration::from_secs(30);
/// Most pods remembered (a node runs at most a few hundred).
pub const MAX_PODS: usize = 4096;
/// Most labels kept per pod.
const MAX_LABELS: usize = 128;
/// Largest `ListPodSandbox` answer accepted, in bytes (annotations can be large).
const MAX_MESSAGE: usize = 64 << 20;

/// Why the runtime could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("{call} failed: {status}")]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("{call} took longer than {CALL_TIMEOUT:?}")]
    Timeout { call: &'static str },
}

/// One pod as the runtime knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRecord {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The pod's labels, sorted by key (the kubelet adds `io.kubernetes.pod.*` ones).
    pub labels: Vec<(String, String)>,
    /// The pod's `resource.opentelemetry.io/<key>` annotations as `(<key>, value)`, sorted; the
    /// others are not kept.
    pub resource_annotations: Vec<(String, String)>,
}

impl PodRecord {
    /// The record of a sandbox from `ListPodSandbox`; `None` without a pod uid.
    pub fn from_sandbox(sandbox: PodSandbox) -> Option<PodRecord> {
        let meta = sandbox.metadata?;
        if meta.uid.is_empty() {
            return None;
        }
        let mut labels: Vec<(String, String)> = sandbox.labels.into_iter().collect();
        labels.sort();
        labels.truncate(MAX_LABELS);
        let mut resource_annotations: Vec<(String, String)> = sandbox
            .annotations
            .into_iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(RESOURCE_ANNOTATION_PREFIX)?.to_owned();
                let value = v.trim().to_owned();
                (!key.is_empty() && !value.is_empty()).then_some((key, value))
            })
            .collect();
        resource_annotations.sort();
        Some(PodRecord {
            uid: meta.uid,
            name: meta.name,
            namespace: meta.namespace,
            labels,
            resource_annotations,
        })
    }

    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The pods of `ListPodSandbox`, one per uid: a pod whose sandbox was made again (a restarted
/// node, a changed network) keeps its newest ready sandbox.
pub fn pods_by_uid(sandboxes: Vec<PodSandbox>) -> HashMap<String, Arc<PodRecord>> {
    let mut newest: HashMap<String, (bool, i64, PodSandbox)> = HashMap::new();
    for sandbox in sandboxes {
        let Some(uid) = sandbox.metadata.as_ref().map(|m| m.uid.clone()) else {
            continue;
        };
        let rank = (sandbox.state == 0, sandbox.created_at);
        match newest.get(&uid) {
            Some((ready, created, _)) if (*ready, *created) >= rank => {}
            _ => {
                if newest.len() < MAX_PODS || newest.contains_key(&uid) {
                    newest.insert(uid, (rank.0, rank.1, sandbox));
                }
            }
        }
    }
    newest
        .into_iter()
        .filter_map(|(uid, (_, _, s))| Some((uid, Arc::new(PodRecord::from_sandbox(s)?))))
        .collect()
}

/// A CRI client on one unix socket.
struct CriClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl CriClient {
    /// Connects to the runtime at `socket`.
    async fn connect(socket: &Path) -> Result<CriClient, CriError> {
        let path = socket.to_path_buf();
        // The URI is not used: every connection goes to the socket.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(CALL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| CriError::Connect {
                socket: socket.to_path_buf(),
                source,
            })?;
        let grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE);
        Ok(CriClient { grpc })
    }

    async fn unary<Req, Resp>(&mut self, call: &'static str, request: Req) -> Result<Resp, CriError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let failed = |status: tonic::Status| CriError::Call {
            call,
            status: Box::new(status),
        };
        let work = async {
            self.grpc
                .ready()
                .await
                .map_err(|e| failed(tonic::Status::unavailable(e.to_string())))?;
            let path = PathAndQuery::try_from(format!("{}{call}", proto::SERVICE))
                .map_err(|e| failed(tonic::Status::internal(e.to_string())))?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            self.grpc
                .unary(tonic::Request::new(request), path, codec)
                .await
                .map(tonic::Response::into_inner)
                .map_err(failed)
        };
        tokio::time::timeout(CALL_TIMEOUT, work)
            .await
            .map_err(|_| CriError::Timeout { call })?
    }

    async fn version(&mut self) -> Result<VersionResponse, CriError> {
        self.unary(
            "Version",
            VersionRequest {
                version: "v1".into(),
            },
        )
        .await
    }

    async fn list_pod_sandboxes(&mut self) -> Result<Vec<PodSandbox>, CriError> {
        let response: proto::ListPodSandboxResponse = self
            .unary("ListPodSandbox", ListPodSandboxRequest { filter: None })
            .await?;
        Ok(response.items)
    }
}

/// What the CRI thread answers to one request.
enum Answer {
    /// Connected for the first time: the runtime's name and version.
    Connected {
        runtime: String,
        version: String,
    },
    Pods(Vec<PodSandbox>),
    Failed(CriError),
}

/// The thread that makes the calls, with its own tokio runtime; it ends when its
/// [`PodDirectory`] is dropped.
fn spawn_caller(socket: PathBuf) -> std::io::Result<(mpsc::Sender<()>, mpsc::Receiver<Answer>)> {
    let (ask, asked) = mpsc::channel::<()>();
    let (answer, answers) = mpsc::channel::<Answer>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ztrace-cri".into())
        .spawn(move || {
            let mut client: Option<CriClient> = None;
            while asked.recv().is_ok() {
                let reply = runtime.block_on(async {
                    let mut connected = None;
                    if client.is_none() {
                        let mut new = match CriClient::connect(&socket).await {
                            Ok(c) => c,
                            Err(e) => return vec![Answer::Failed(e)],
                        };
                        match new.version().await {
                            Ok(v) => {
                                connected = Some(Answer::Connected {
                                    runtime: v.runtime_name,
                                    version: v.runtime_version,
                                })
                            }
                            Err(e) => return vec![Answer::Failed(e)],
                        }
                        client = Some(new);
                    }
                    let Some(c) = client.as_mut() else {
                        return Vec::new();
                    };
                    let result = c.list_pod_sandboxes().await;
                    let mut out: Vec<Answer> = connected.into_iter().collect();
                    match result {
                        Ok(pods) => out.push(Answer::Pods(pods)),
                        Err(e) => {
                            // Connect again next time (the runtime may have restarted).
                            client = None;
                            out.push(Answer::Failed(e));
                        }
                    }
                    out
                });
                for a in reply {
                    if answer.send(a).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok((ask, answers))
}

/// Where the directory gets its pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodSource {
    /// No source: Kubernetes names come from the runtime's records only.
    Off,
    /// The first of these sockets that exists.
    Sockets(Vec<PathBuf>),
}

impl PodSource {
    /// The source of `--cri-socket`: `none` (or `off`) turns it off; a path is that socket;
    /// absent, [`DEFAULT_SOCKETS`].
    pub fn from_option(option: Option<&str>) -> PodSource {
        match option.map(str::trim) {
            Some("none" | "off" | "") => PodSource::Off,
            Some(path) => PodSource::Sockets(vec![PathBuf::from(path)]),
            None => PodSource::Sockets(DEFAULT_SOCKETS.iter().map(PathBuf::from).collect()),
        }
    }
}

/// The caller thread and its state.
enum Caller {
    NotStarted,
    Running {
        socket: PathBuf,
        ask: mpsc::Sender<()>,
        answers: mpsc::Receiver<Answer>,
        /// A request is out and not answered yet.
        pending: bool,
        /// When the last request was sent.
        asked_at: Instant,
    },
}

/// The pods of this node with their labels and annotations, by pod uid (see the module doc).
pub struct PodDirectory {
    source: PodSource,
    pods: HashMap<String, Arc<PodRecord>>,
    /// Counts the lists taken in: a process read while its pod was unknown is read again when
    /// this changed.
    generation: u64,
    caller: Caller,
    /// When the runtime may be asked next.
    next_ask: Option<Instant>,
    /// The one line about a missing or refusing runtime was said.
    told_failure: bool,
    /// Lists asked for so far; the one outstanding, if any, is number `asked`.
    asked: u64,
    /// Pods asked for and not found: the number of the last list asked for when the pod was
    /// missed, and since when a list asked for later came without it (`None`: no such list yet).
    absent: HashMap<String, (u64, Option<Instant>)>,
}

impl std::fmt::Debug for PodDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodDirectory")
            .field("source", &self.source)
            .field("pods", &self.pods.len())
            .field("generation", &self.generation)
            .finish()
    }
}

impl Default for PodDirectory {
    fn default() -> Self {
        PodDirectory::new(PodSource::Off)
    }
}

impl PodDirectory {
    /// A directory that asks `source`; nothing is started before the first lookup.
    pub fn new(source: PodSource) -> PodDirectory {
        PodDirectory {
            source,
            pods: HashMap::new(),
            generation: 0,
            caller: Caller::NotStarted,
            next_ask: None,
            told_failure: false,
            asked: 0,
            absent: HashMap::new(),
        }
    }

    /// Whether a source is configured.
    pub fn is_on(&self) -> bool {
        self.source != PodSource::Off
    }

    /// Changes every time a list of pods was taken in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of pods known.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The pod with uid `uid`. An unknown uid asks the runtime and waits, at most [`WAIT`] in
    /// all, for a list asked for after the miss (an answer already on its way, then the next
    /// list once [`MIN_REFRESH`] allows); a uid that such a list did not have either is not
    /// asked for again before [`RETRY`].
    pub fn lookup(&mut self, uid: &str) -> Option<Arc<PodRecord>> {
        if !self.is_on() {
            return None;
        }
        self.take_answers(None);
        if let Some(pod) = self.pods.get(uid) {
            return Some(pod.clone());
        }
        let deadline = Instant::now() + WAIT;
        loop {
            self.ask_for(uid);
            if let Some(pod) = self.pods.get(uid) {
                return Some(pod.clone());
            }
            if !self.may_appear(uid) {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            if self.is_pending() {
                self.take_answers(Some(deadline - now));
            } else if let Some(due) = self.next_ask.filter(|due| *due < deadline) {
                // Asked a moment ago, before this pod was missed: the next list is due soon.
                std::thread::sleep(due.saturating_duration_since(now));
            } else {
                // No runtime, or it failed and is not tried again before [`RETRY`].
                return None;
            }
        }
    }

    /// A list was asked for and not answered yet.
    fn is_pending(&self) -> bool {
        matches!(self.caller, Caller::Running { pending: true, .. })
    }

    /// Like [`PodDirectory::lookup`] without waiting: takes in answers that arrived and asks
    /// again when due. For processes whose pod was unknown when they were read.
    pub fn poll(&mut self, uid: &str) {
        if !self.is_on() {
            return;
        }
        self.take_answers(None);
        if !self.pods.contains_key(uid) {
            self.ask_for(uid);
        }
    }

    /// Whether pod `uid`, unknown now, may still show up in a list: the source is on and no
    /// list asked for after it was missed came without it.
    pub fn may_appear(&self, uid: &str) -> bool {
        self.is_on()
            && !self.pods.contains_key(uid)
            && self
                .absent
                .get(uid)
                .is_none_or(|(_, confirmed)| confirmed.is_none())
    }

    /// Asks for the missing pod `uid` when due (see [`PodDirectory::lookup`]).
    fn ask_for(&mut self, uid: &str) -> bool {
        match self.absent.get_mut(uid) {
            // Listed since it was missed, and not there.
            Some((missed_at, confirmed)) if confirmed.is_some() => {
                if confirmed.is_some_and(|since| since.elapsed() < RETRY) {
                    return false;
                }
                *missed_at = self.asked;
                *confirmed = None;
            }
            Some(_) => {}
            None => {
                if self.absent.len() >= MAX_PODS {
                    self.absent.clear();
                }
                self.absent.insert(uid.to_owned(), (self.asked, None));
            }
        }
        self.ask()
    }

    /// Sends a request when one is due and none is out; true when one was sent.
    fn ask(&mut self) -> bool {
        let now = Instant::now();
        if self.next_ask.is_some_and(|t| now < t) {
            return false;
        }
        if matches!(self.caller, Caller::NotStarted) {
            let PodSource::Sockets(candidates) = &self.source else {
                return false;
            };
            let Some(socket) = candidates.iter().find(|p| is_socket(p)).cloned() else {
                self.next_ask = Some(now + RETRY);
                self.tell_failure(&format!(
                    "no container runtime socket at {}",
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                return false;
            };
            match spawn_caller(socket.clone()) {
                Ok((ask, answers)) => {
                    self.caller = Caller::Running {
                        socket,
                        ask,
                        answers,
                        pending: false,
                        asked_at: now,
                    }
                }
                Err(error) => {
                    self.next_ask = Some(now + RETRY);
                    self.tell_failure(&format!("cannot start the CRI thread: {error}"));
                    return false;
                }
            }
        }
        let Caller::Running {
            ask,
            pending,
            asked_at,
            ..
        } = &mut self.caller
        else {
            return false;
        };
        if *pending {
            return false;
        }
        if ask.send(()).is_err() {
            self.caller = Caller::NotStarted;
            return false;
        }
        *pending = true;
        *asked_at = now;
        self.asked += 1;
        self.next_ask = Some(now + MIN_REFRESH);
        true
    }

    /// Takes in the answers that arrived, waiting up to `wait` for the one outstanding.
    fn take_answers(&mut self, wait: Option<Duration>) {
        loop {
            let Caller::Running {
                answers,
                pending,
                socket,
                asked_at,
                ..
            } = &mut self.caller
            else {
                return;
            };
            if !*pending {
                return;
            }
            let answer = match wait {
                Some(w) => answers.recv_timeout(w).map_err(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => mpsc::TryRecvError::Empty,
                    mpsc::RecvTimeoutError::Disconnected => mpsc::TryRecvError::Disconnected,
                }),
                None => answers.try_recv(),
            };
            match answer {
                Ok(Answer::Connected { runtime, version }) => {
                    tracing::info!(%runtime, %version, socket = %socket.display(), "pod labels and annotations from the container runtime over CRI");
                    self.told_failure = false;
                }
                Ok(Answer::Pods(sandboxes)) => {
                    *pending = false;
                    let micros = asked_at.elapsed().as_micros();
                    self.take_list_asked(sandboxes, self.asked);
                    tracing::debug!(pods = self.pods.len(), micros, "pods listed over CRI");
                    return;
                }
                Ok(Answer::Failed(error)) => {
                    *pending = false;
                    let text = format!("{error}");
                    self.next_ask = Some(Instant::now() + RETRY);
                    self.tell_failure(&text);
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.caller = Caller::NotStarted;
                    return;
                }
            }
        }
    }

    /// Takes in the pods of a `ListPodSandbox` made now (after every miss so far).
    #[cfg(test)]
    pub(super) fn take_list(&mut self, sandboxes: Vec<PodSandbox>) {
        self.take_list_asked(sandboxes, self.asked + 1);
    }

    /// Takes in the pods of list number `number`: the pods it lacks that were missed before
    /// it was asked for are now known to be absent.
    fn take_list_asked(&mut self, sandboxes: Vec<PodSandbox>, number: u64) {
        self.pods = pods_by_uid(sandboxes);
        self.generation += 1;
        let pods = &self.pods;
        let now = Instant::now();
        self.absent.retain(|uid, _| !pods.contains_key(uid));
        for (missed_at, confirmed) in self.absent.values_mut() {
            if *missed_at < number && confirmed.is_none() {
                *confirmed = Some(now);
            }
        }
    }

    /// Says once why pod labels and annotations are unknown.
    fn tell_failure(&mut self, why: &str) {
        if self.told_failure {
            tracing::debug!(%why, "no pod labels over CRI");
            return;
        }
        self.told_failure = true;
        tracing::warn!("pod labels and annotations are unknown ({why}): Kubernetes names come from the container runtime's records only; tried again every {}s", RETRY.as_secs());
    }
}

/// True when `path` is a unix socket.
fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::proto::PodSandboxMetadata;
    use super::*;

    fn sandbox(uid: &str, state: i32, created_at: i64, app: &str) -> PodSandbox {
        PodSandbox {
            id: format!("{uid}-{created_at}"),
            metadata: Some(PodSandboxMetadata {
                name: "cart-7d9c4b8f6-x2x9q".into(),
                uid: uid.into(),
                namespace: "shop".into(),
                attempt: 0,
            }),
            state,
            created_at,
            labels: [("app.kubernetes.io/name".to_owned(), app.to_owned())].into(),
            annotations: [
                (
                    "resource.opentelemetry.io/service.name".to_owned(),
                    " storefront ".to_owned(),
                ),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                    "{}".to_owned(),
                ),
                ("resource.opentelemetry.io/".to_owned(), "x".to_owned()),
            ]
            .into(),
            runtime_handler: String::new(),
        }
    }

    #[test]
    fn a_sandbox_gives_the_pods_labels_and_resource_annotations() {
        let record = PodRecord::from_sandbox(sandbox("u1", 0, 1, "cart")).expect("record");
        assert_eq!(record.uid, "u1");
        assert_eq!(record.namespace, "shop");
        assert_eq!(record.label("app.kubernetes.io/name"), Some("cart"));
        assert_eq!(
            record.resource_annotations,
            [("service.name".to_owned(), "storefront".to_owned())]
        );
        let mut no_uid = sandbox("", 0, 1, "cart");
        assert_eq!(PodRecord::from_sandbox(no_uid.clone()), None);
        no_uid.metadata = None;
        assert_eq!(PodRecord::from_sandbox(no_uid), None);
    }

    #[test]
    fn the_newest_ready_sandbox_of_a_pod_wins() {
        let pods = pods_by_uid(vec![
            sandbox("u1", 1, 30, "stopped-newest"),
            sandbox("u1", 0, 10, "ready-old"),
            sandbox("u1", 0, 20, "ready-new"),
            sandbox("u2", 0, 5, "other"),
        ]);
        assert_eq!(pods.len(), 2);
        assert_eq!(
            pods["u1"].label("app.kubernetes.io/name"),
            Some("ready-new")
        );
    }

    #[test]
    fn the_source_option() {
        assert_eq!(PodSource::from_option(Some("none")), PodSource::Off);
        assert_eq!(
            PodSource::from_option(Some("/x.sock")),
            PodSource::Sockets(vec![PathBuf::from("/x.sock")])
        );
        assert_eq!(
            PodSource::from_option(None),
            PodSource::Sockets(DEFAULT_SOCKETS.iter().map(PathBuf::from).collect())
        );
    }

    #[test]
    fn without_a_socket_nothing_is_found() {
        let mut pods = PodDirectory::new(PodSource::Sockets(vec![PathBuf::from(
            "/nonexistent/ztrace-test.sock",
        )]));
        assert_eq!(pods.lookup("u1"), None);
        assert_eq!(pods.lookup("u1"), None);
        assert_eq!(pods.generation(), 0);
        let mut off = PodDirectory::new(PodSource::Off);
        assert_eq!(off.lookup("u1"), None);
        assert!(!off.may_appear("u1"));
    }

    #[test]
    fn a_pod_missing_from_a_later_list_is_not_asked_for_again_at_once() {
        let mut pods = PodDirectory::new(PodSource::Sockets(vec![PathBuf::from(
            "/nonexistent/ztrace-test.sock",
        )]));
        assert_eq!(pods.lookup("u1"), None);
        assert!(pods.may_appear("u1"), "not listed since it was asked for");
        pods.take_list(vec![sandbox("u2", 0, 1, "other")]);
        assert_eq!(pods.generation(), 1);
        assert!(!pods.may_appear("u1"), "listed without it");
        assert!(pods.lookup("u2").is_some());
        // It shows up in a later list after all.
        pods.take_list(vec![sandbox("u1", 0, 1, "late")]);
        assert_eq!(
            pods.lookup("u1")
                .and_then(|p| p.label("app.kubernetes.io/name").map(str::to_owned)),
            Some("late".to_owned())
        );
        assert!(pods.absent.is_empty());
    }

    #[test]
    fn a_list_asked_for_before_a_pod_was_missed_does_not_make_it_absent() {
        let mut pods = PodDirectory::new(PodSource::Sockets(vec![PathBuf::from(
            "/nonexistent/ztrace-test.sock",
        )]));
        // List 1 is on its way when the process of a new pod is read.
        pods.asked = 1;
        pods.poll("u1");
        pods.take_list_asked(vec![sandbox("u2", 0, 1, "other")], 1);
        assert!(
            pods.may_appear("u1"),
            "list 1 was asked for before the miss"
        );
        pods.take_list_asked(vec![sandbox("u2", 0, 1, "other")], 2);
        assert!(!pods.may_appear("u1"), "list 2 was asked for after it");
    }
}
