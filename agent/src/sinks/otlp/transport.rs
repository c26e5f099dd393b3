//! The two OTLP transports: gRPC (tonic) and HTTP with a protobuf body (reqwest).
//!
//! One [`Transport::attempt`] is one request, with no retry: it says whether the endpoint took the
//! spans, rejected some of them, or failed — and whether that failure is worth retrying, following
//! the OTLP specification's lists of retryable gRPC codes and HTTP statuses. Retry, backoff and
//! counting live in the parent module. No TLS: `https` endpoints are refused when the transport is
//! built.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_client::TraceServiceClient, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};

use super::{ExportError, OtlpConfig, OtlpProtocol};

/// How long a connection attempt may take before it counts as a failed attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest error body of an HTTP response kept for the log.
const MAX_ERROR_BODY: usize = 256;

/// A request that the endpoint answered with success.
#[derive(Debug, Default, PartialEq)]
pub struct Accepted {
    /// Spans the endpoint says it rejected (OTLP partial success); they are not retried.
    pub rejected_spans: u64,
    /// The endpoint's explanation of a partial success, if any.
    pub message: String,
}

/// A failed attempt.
#[derive(Debug)]
pub struct AttemptError {
    pub error: ExportError,
    /// Whether the same request may succeed later (the OTLP spec's retryable failures).
    pub retryable: bool,
    /// A delay that the server asked for (HTTP `Retry-After` in seconds).
    pub retry_after: Option<Duration>,
}

/// A configured transport, cheap to use from one task.
pub enum Transport {
    Grpc {
        client: TraceServiceClient<Channel>,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: reqwest::Url,
        headers: HeaderMap,
    },
}

impl Transport {
    /// Builds the transport; connects nothing (the gRPC channel connects lazily on first use).
    ///
    /// Must run inside a tokio runtime.
    pub fn new(config: &OtlpConfig) -> Result<Self, ExportError> {
        let url = config.traces_url();
        let invalid = |reason: String| ExportError::InvalidEndpoint {
            endpoint: url.clone(),
            reason,
        };
        let parsed = reqwest::Url::parse(&url).map_err(|e| invalid(e.to_string()))?;
        match parsed.scheme() {
            "http" => {}
            "https" => {
                return Err(invalid(
                    "https needs TLS, which this build does not include; use http://".into(),
                ))
            }
            other => {
                return Err(invalid(format!(
                    "unsupported scheme {other:?}, expected http"
                )))
            }
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid("no host".into()));
        }
        match config.protocol {
            OtlpProtocol::Grpc => {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| invalid(e.to_string()))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true);
                let mut metadata = MetadataMap::new();
                for (k, v) in &config.headers {
                    let key = AsciiMetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|_| {
                            ExportError::InvalidHeader(format!(
                                "{k:?} is not a valid gRPC metadata key"
                            ))
                        })?;
                    // gRPC ASCII metadata: printable ASCII only (tonic also lets bytes >= 0x80 in).
                    let value = Some(v.as_str())
                        .filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b)))
                        .and_then(|v| AsciiMetadataValue::try_from(v).ok())
                        .ok_or_else(|| {
                            ExportError::InvalidHeader(format!(
                                "value of {k:?} is not valid gRPC metadata"
                            ))
                        })?;
                    metadata.append(key, value);
                }
                Ok(Transport::Grpc {
                    client: TraceServiceClient::new(endpoint.connect_lazy()),
                    metadata,
                })
            }
            OtlpProtocol::HttpProtobuf => {
                let mut headers = HeaderMap::new();
                for (k, v) in &config.headers {
                    let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                        ExportError::InvalidHeader(format!("{k:?} is not a valid header name"))
                    })?;
                    let value = HeaderValue::from_str(v).map_err(|_| {
                        ExportError::InvalidHeader(format!(
                            "value of {k:?} is not a valid header value"
                        ))
                    })?;
                    headers.append(name, value);
                }
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                let client = reqwest::Client::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .user_agent(concat!("ztrace/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(ExportError::HttpClient)?;
                Ok(Transport::Http {
                    client,
                    url: parsed,
                    headers,
                })
            }
        }
    }

    /// Sends one request. `timeout` bounds the whole attempt, connection included.
    pub async fn attempt(
        &self,
        request: &Payload,
        timeout: Duration,
    ) -> Result<Accepted, AttemptError> {
        match tokio::time::timeout(timeout, self.attempt_unbounded(request, timeout)).await {
            Ok(result) => result,
            Err(_) => Err(AttemptError {
                error: ExportError::Timeout(timeout),
                retryable: true,
                retry_after: None,
            }),
        }
    }

    async fn attempt_unbounded(
        &self,
        request: &Payload,
        timeout: Duration,
    ) -> Result<Accepted, AttemptError> {
        match self {
            Transport::Grpc { client, metadata } => {
                let mut req = tonic::Request::new(request.message.clone());
                *req.metadata_mut() = metadata.clone();
                req.set_timeout(timeout);
                match client.clone().export(req).await {
                    Ok(response) => Ok(accepted(response.into_inner())),
                    Err(status) => {
                        let retryable = grpc_retryable(status.code());
                        Err(AttemptError {
                            error: ExportError::Grpc(status),
                            retryable,
                            retry_after: None,
                        })
                    }
                }
            }
            Transport::Http {
                client,
                url,
                headers,
            } => {
                let response = client
                    .post(url.clone())
                    .headers(headers.clone())
                    .body(request.encoded.clone())
                    .send()
                    .await
                    .map_err(|e| AttemptError {
                        error: ExportError::Http(e),
                        retryable: true,
                        retry_after: None,
                    })?;
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                // A failing body read after a success status still means the spans arrived.
                let body = response.bytes().await.unwrap_or_default();
                if status.is_success() {
                    // The body is an ExportTraceServiceResponse, possibly empty; undecodable
                    // bodies (a proxy's text, say) are taken as plain success.
                    return Ok(ExportTraceServiceResponse::decode(body)
                        .map(accepted)
                        .unwrap_or_default());
                }
                let mut message =
                    String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]).into_owned();
                message.retain(|c| !c.is_control());
                Err(AttemptError {
                    error: ExportError::HttpStatus {
                        status: status.as_u16(),
                        message,
                    },
                    retryable: http_retryable(status.as_u16()),
                    retry_after,
                })
            }
        }
    }
}

/// One batch, in the form each transport sends: the message (gRPC) or its encoding (HTTP).
pub struct Payload {
    message: ExportTraceServiceRequest,
    encoded: bytes::Bytes,
}

impl Payload {
    /// Prepares a request for `protocol`; only what that transport needs is kept.
    pub fn new(protocol: OtlpProtocol, message: ExportTraceServiceRequest) -> Self {
        match protocol {
            OtlpProtocol::Grpc => Payload {
                message,
                encoded: bytes::Bytes::new(),
            },
            OtlpProtocol::HttpProtobuf => Payload {
                encoded: message.encode_to_vec().into(),
                message: ExportTraceServiceRequest::default(),
            },
        }
    }
}

fn accepted(response: ExportTraceServiceResponse) -> Accepted {
    match response.partial_success {
        Some(p) => Accepted {
            rejected_spans: u64::try_from(p.rejected_spans).unwrap_or(0),
            message: p.error_message,
        },
        None => Accepted::default(),
    }
}

/// gRPC codes that the OTLP specification lists as retryable (`RESOURCE_EXHAUSTED` included:
/// collectors use it for back-pressure).
pub fn grpc_retryable(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// HTTP statuses that the OTLP specification lists as retryable.
pub fn http_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(grpc_retryable(tonic::Code::Unavailable));
        assert!(grpc_retryable(tonic::Code::ResourceExhausted));
        assert!(grpc_retryable(tonic::Code::DeadlineExceeded));
        assert!(!grpc_retryable(tonic::Code::InvalidArgument));
        assert!(!grpc_retryable(tonic::Code::Unauthenticated));
        assert!(!grpc_retryable(tonic::Code::Unimplemented));
        for s in [429, 502, 503, 504] {
            assert!(http_retryable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 500] {
            assert!(!http_retryable(s), "{s}");
        }
    }
}
