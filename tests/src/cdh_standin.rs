//! Stand-ins for the CoCo guest's peers that cannot run here (no TEE, no kata guest): a
//! Confidential Data Hub, an attestation agent, and a kata-agent-like client.
//!
//! All three are built on `ttrpc` (containerd's Rust ttrpc, the implementation kata-agent
//! and guest-components use) with their messages written here with prost from the
//! `.proto` files, so they share no code with `veil-cdh`: a front door or client that
//! gets the wire wrong fails against them.
//!
//! - [`CdhStandIn`] — serves `api.GetResourceService/GetResource` from a map (a missing
//!   resource gets CDH's answer: `INTERNAL`, [`CDH_GET_RESOURCE_ERROR`]), and a
//!   service Veil does not know, `veiltest.EchoService` (`Echo` answers its payload,
//!   `EchoStream` echoes each data frame of a duplex stream); records every call.
//! - [`AaStandIn`] — `attestation_agent.AttestationAgentService/ExtendRuntimeMeasurement`,
//!   answering a chosen result and recording each request.
//! - [`TtrpcClient`] and [`pull_image`] call the socket the way kata-agent does (one
//!   connection for every service, `timeout_nano` set on each request).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use async_trait::async_trait;
use prost::Message;
use ttrpc::r#async::{MethodHandler, Server, Service, StreamHandler, StreamInner, TtrpcContext};
use ttrpc::Code;

/// The messages, from guest-components `protos/confidential-data-hub/api.proto` and
/// `protos/attestation-agent/attestation-agent.proto`.
pub mod wire {
    /// `api.GetResourceRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetResourceRequest {
        /// `ResourcePath`.
        #[prost(string, tag = "1")]
        pub resource_path: String,
    }

    /// `api.GetResourceResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetResourceResponse {
        /// `Resource`.
        #[prost(bytes = "vec", tag = "1")]
        pub resource: Vec<u8>,
    }

    /// `api.ImagePullRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImagePullRequest {
        /// `image_url`.
        #[prost(string, tag = "1")]
        pub image_url: String,
        /// `bundle_path`.
        #[prost(string, tag = "2")]
        pub bundle_path: String,
    }

    /// `api.ImagePullResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImagePullResponse {
        /// `manifest_digest`.
        #[prost(string, tag = "1")]
        pub manifest_digest: String,
    }

    /// `attestation_agent.ExtendRuntimeMeasurementRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExtendRuntimeMeasurementRequest {
        /// `Domain`.
        #[prost(string, tag = "1")]
        pub domain: String,
        /// `Operation`.
        #[prost(string, tag = "2")]
        pub operation: String,
        /// `Content`.
        #[prost(string, tag = "3")]
        pub content: String,
        /// `RegisterIndex`.
        #[prost(uint64, optional, tag = "4")]
        pub register_index: Option<u64>,
    }

    /// `attestation_agent.ExtendRuntimeMeasurementResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExtendRuntimeMeasurementResponse {
        /// `Result` (`OK` 0, `NOT_SUPPORTED` 1, `NOT_ENABLED` 2).
        #[prost(int32, tag = "1")]
        pub result: i32,
    }
}

/// CDH's resource service.
pub const GET_RESOURCE_SERVICE: &str = "api.GetResourceService";
/// The test-only service Veil knows nothing about.
pub const ECHO_SERVICE: &str = "veiltest.EchoService";
/// Its unary method (answers the request payload).
pub const ECHO_METHOD: &str = "Echo";
/// Its duplex streaming method (echoes every data frame, then answers OK).
pub const ECHO_STREAM_METHOD: &str = "EchoStream";
/// What CDH answers when `GetResource` fails (any cause).
pub const CDH_GET_RESOURCE_ERROR: &str = "[CDH] [ERROR]: Get Resource failed";
/// The attestation agent's service.
pub const AA_SERVICE: &str = "attestation_agent.AttestationAgentService";

/// One call (or one data frame of a stream) a stand-in received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCall {
    /// Fully qualified service.
    pub service: String,
    /// Method.
    pub method: String,
    /// The request's payload bytes (for a stream's data frame: that frame's payload).
    pub payload: Vec<u8>,
    /// The request's `timeout_nano` (0 for data frames).
    pub timeout_nano: i64,
    /// Whether this is a data frame of a stream rather than a request.
    pub stream_data: bool,
}

type Calls = Arc<Mutex<Vec<RecordedCall>>>;

fn record(
    calls: &Calls,
    service: &str,
    method: &str,
    payload: &[u8],
    timeout_nano: i64,
    stream_data: bool,
) {
    calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(RecordedCall {
            service: service.to_string(),
            method: method.to_string(),
            payload: payload.to_vec(),
            timeout_nano,
            stream_data,
        });
}

fn ok_response(payload: Vec<u8>) -> ttrpc::Response {
    let mut response = ttrpc::Response::new();
    response.set_status(ttrpc::get_status(Code::OK, ""));
    response.payload = payload;
    response
}

fn error_response(code: Code, message: &str) -> ttrpc::Response {
    let mut response = ttrpc::Response::new();
    response.set_status(ttrpc::get_status(code, message));
    response
}

fn unix_uri(path: &Path) -> String {
    format!("unix://{}", path.display())
}

async fn start_server(socket: &Path, services: HashMap<String, Service>) -> anyhow::Result<Server> {
    let _ = std::fs::remove_file(socket);
    let mut server = Server::new()
        .bind(&unix_uri(socket))
        .map_err(|e| anyhow!("binding {}: {e}", socket.display()))?
        .register_service(services);
    server
        .start()
        .await
        .map_err(|e| anyhow!("starting the ttrpc server on {}: {e}", socket.display()))?;
    Ok(server)
}

struct GetResource {
    resources: HashMap<String, Vec<u8>>,
    calls: Calls,
}

#[async_trait]
impl MethodHandler for GetResource {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        record(
            &self.calls,
            &req.service,
            &req.method,
            &req.payload,
            req.timeout_nano,
            false,
        );
        let Ok(get) = wire::GetResourceRequest::decode(&req.payload[..]) else {
            return Ok(error_response(Code::INTERNAL, "not a GetResourceRequest"));
        };
        Ok(match self.resources.get(&get.resource_path) {
            Some(resource) => ok_response(
                wire::GetResourceResponse {
                    resource: resource.clone(),
                }
                .encode_to_vec(),
            ),
            None => error_response(Code::INTERNAL, CDH_GET_RESOURCE_ERROR),
        })
    }
}

struct Echo {
    calls: Calls,
}

#[async_trait]
impl MethodHandler for Echo {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        record(
            &self.calls,
            &req.service,
            &req.method,
            &req.payload,
            req.timeout_nano,
            false,
        );
        Ok(ok_response(req.payload.clone()))
    }
}

struct EchoStream {
    calls: Calls,
}

#[async_trait]
impl StreamHandler for EchoStream {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        mut stream: StreamInner,
    ) -> ttrpc::Result<Option<ttrpc::Response>> {
        record(
            &self.calls,
            ECHO_SERVICE,
            ECHO_STREAM_METHOD,
            &[],
            ctx.timeout_nano,
            false,
        );
        loop {
            match stream.recv().await {
                Ok(data) => {
                    record(
                        &self.calls,
                        ECHO_SERVICE,
                        ECHO_STREAM_METHOD,
                        &data,
                        0,
                        true,
                    );
                    stream.send(data).await?;
                }
                Err(ttrpc::Error::Eof) | Err(ttrpc::Error::RemoteClosed) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(Some(ok_response(Vec::new())))
    }
}

/// A Confidential Data Hub stand-in on a unix socket.
pub struct CdhStandIn {
    server: Server,
    socket: PathBuf,
    calls: Calls,
}

impl CdhStandIn {
    /// Serves on `socket`; `resources` maps a `ResourcePath` (e.g. `kbs:///a/b/c`) to bytes.
    pub async fn start(socket: &Path, resources: HashMap<String, Vec<u8>>) -> anyhow::Result<Self> {
        let calls: Calls = Arc::default();
        let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
        methods.insert(
            "GetResource".into(),
            Box::new(GetResource {
                resources,
                calls: calls.clone(),
            }),
        );
        let mut services = HashMap::new();
        services.insert(
            GET_RESOURCE_SERVICE.to_string(),
            Service {
                methods,
                streams: HashMap::new(),
            },
        );
        let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
        methods.insert(
            ECHO_METHOD.into(),
            Box::new(Echo {
                calls: calls.clone(),
            }),
        );
        let mut streams: HashMap<String, Arc<dyn StreamHandler + Send + Sync>> = HashMap::new();
        streams.insert(
            ECHO_STREAM_METHOD.into(),
            Arc::new(EchoStream {
                calls: calls.clone(),
            }),
        );
        services.insert(ECHO_SERVICE.to_string(), Service { methods, streams });
        let server = start_server(socket, services).await?;
        Ok(Self {
            server,
            socket: socket.to_path_buf(),
            calls,
        })
    }

    /// Every call received so far, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The socket served.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops serving, closes every connection and removes the socket.
    pub async fn stop(mut self) {
        let _ = self.server.shutdown().await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One `ExtendRuntimeMeasurement` request the attestation-agent stand-in received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedMeasurement {
    /// `Domain`.
    pub domain: String,
    /// `Operation`.
    pub operation: String,
    /// `Content`.
    pub content: String,
    /// `RegisterIndex`.
    pub register_index: Option<u64>,
    /// The request's `timeout_nano`.
    pub timeout_nano: i64,
}

struct Extend {
    result: i32,
    seen: Arc<Mutex<Vec<RecordedMeasurement>>>,
}

#[async_trait]
impl MethodHandler for Extend {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let Ok(extend) = wire::ExtendRuntimeMeasurementRequest::decode(&req.payload[..]) else {
            return Ok(error_response(
                Code::INVALID_ARGUMENT,
                "not an ExtendRuntimeMeasurementRequest",
            ));
        };
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(RecordedMeasurement {
                domain: extend.domain,
                operation: extend.operation,
                content: extend.content,
                register_index: extend.register_index,
                timeout_nano: req.timeout_nano,
            });
        Ok(ok_response(
            wire::ExtendRuntimeMeasurementResponse {
                result: self.result,
            }
            .encode_to_vec(),
        ))
    }
}

/// An attestation-agent stand-in on a unix socket.
pub struct AaStandIn {
    server: Server,
    socket: PathBuf,
    seen: Arc<Mutex<Vec<RecordedMeasurement>>>,
}

impl AaStandIn {
    /// Serves on `socket`, answering every `ExtendRuntimeMeasurement` with `result`
    /// (0 `OK`, 1 `NOT_SUPPORTED`, 2 `NOT_ENABLED`).
    pub async fn start(socket: &Path, result: i32) -> anyhow::Result<Self> {
        let seen = Arc::default();
        let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
        methods.insert(
            "ExtendRuntimeMeasurement".into(),
            Box::new(Extend {
                result,
                seen: Arc::clone(&seen),
            }),
        );
        let mut services = HashMap::new();
        services.insert(
            AA_SERVICE.to_string(),
            Service {
                methods,
                streams: HashMap::new(),
            },
        );
        let server = start_server(socket, services).await?;
        Ok(Self {
            server,
            socket: socket.to_path_buf(),
            seen,
        })
    }

    /// The requests received so far.
    pub fn measurements(&self) -> Vec<RecordedMeasurement> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops serving and removes the socket.
    pub async fn stop(mut self) {
        let _ = self.server.shutdown().await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// How a call through [`TtrpcClient`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallFailure {
    /// The server answered with a non-OK `google.rpc.Status`.
    Status {
        /// The code (e.g. 13 `INTERNAL`, 14 `UNAVAILABLE`).
        code: i32,
        /// The message.
        message: String,
    },
    /// No status: the connection or the client failed (text of the ttrpc error).
    Other(String),
}

impl CallFailure {
    fn from_ttrpc(error: ttrpc::Error) -> Self {
        match error {
            ttrpc::Error::RpcStatus(status) => CallFailure::Status {
                code: status.code() as i32,
                message: status.message.clone(),
            },
            other => CallFailure::Other(other.to_string()),
        }
    }
}

/// A ttrpc client on one connection, like kata-agent's CDH client (clones share it).
#[derive(Clone)]
pub struct TtrpcClient {
    client: ttrpc::r#async::Client,
}

impl TtrpcClient {
    /// Connects to the socket.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let client = ttrpc::r#async::Client::connect(&unix_uri(socket))
            .await
            .map_err(|e| anyhow!("connecting to {}: {e}", socket.display()))?;
        Ok(Self { client })
    }

    /// A unary call with raw request `payload`; the raw response payload, or the failure.
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallFailure> {
        let mut request = ttrpc::Request::new();
        request.service = service.to_string();
        request.method = method.to_string();
        request.payload = payload;
        request.timeout_nano = timeout.as_nanos() as i64;
        self.client
            .request(request)
            .await
            .map(|response| response.payload)
            .map_err(CallFailure::from_ttrpc)
    }

    /// `api.ImagePullService/PullImage` as kata-agent sends it: the manifest digest.
    pub async fn pull_image(
        &self,
        image_url: &str,
        bundle_path: &Path,
        timeout: Duration,
    ) -> Result<String, CallFailure> {
        let request = wire::ImagePullRequest {
            image_url: image_url.to_string(),
            bundle_path: bundle_path.display().to_string(),
        };
        let payload = self
            .call(
                "api.ImagePullService",
                "PullImage",
                request.encode_to_vec(),
                timeout,
            )
            .await?;
        wire::ImagePullResponse::decode(&payload[..])
            .map(|r| r.manifest_digest)
            .map_err(|e| CallFailure::Other(format!("not an ImagePullResponse: {e}")))
    }

    /// `api.GetResourceService/GetResource`: the resource bytes.
    pub async fn get_resource(
        &self,
        resource_path: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallFailure> {
        let request = wire::GetResourceRequest {
            resource_path: resource_path.to_string(),
        };
        let payload = self
            .call(
                GET_RESOURCE_SERVICE,
                "GetResource",
                request.encode_to_vec(),
                timeout,
            )
            .await?;
        wire::GetResourceResponse::decode(&payload[..])
            .map(|r| r.resource)
            .map_err(|e| CallFailure::Other(format!("not a GetResourceResponse: {e}")))
    }

    /// `veiltest.EchoService/EchoStream`: sends each of `messages` as a data frame, closes
    /// its side, and returns what came back before the final response.
    pub async fn echo_stream(
        &self,
        messages: &[Vec<u8>],
        timeout: Duration,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut request = ttrpc::Request::new();
        request.service = ECHO_SERVICE.to_string();
        request.method = ECHO_STREAM_METHOD.to_string();
        request.timeout_nano = timeout.as_nanos() as i64;
        let exchange = async {
            let mut stream = self
                .client
                .new_stream(request, true, true)
                .await
                .map_err(|e| anyhow!("opening the stream: {e}"))?;
            for message in messages {
                stream
                    .send(message.clone())
                    .await
                    .map_err(|e| anyhow!("sending: {e}"))?;
            }
            stream
                .close_send()
                .await
                .map_err(|e| anyhow!("closing: {e}"))?;
            let mut echoes = Vec::new();
            for _ in messages {
                echoes.push(stream.recv().await.map_err(|e| anyhow!("receiving: {e}"))?);
            }
            // The final response (empty payload, OK).
            let last = stream
                .recv()
                .await
                .map_err(|e| anyhow!("final response: {e}"))?;
            anyhow::ensure!(
                last.is_empty(),
                "the final response carries {} bytes",
                last.len()
            );
            Ok(echoes)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .context("the echo stream did not finish in time")?
    }
}

/// kata-agent's `PullImage` on `socket` (a connection of its own): the manifest digest,
/// or the failure (a ttrpc status: code and message).
pub async fn pull_image(
    socket: &Path,
    image_url: &str,
    bundle_path: &Path,
    timeout: Duration,
) -> Result<String, CallFailure> {
    let client = TtrpcClient::connect(socket)
        .await
        .map_err(|e| CallFailure::Other(format!("{e:#}")))?;
    client.pull_image(image_url, bundle_path, timeout).await
}
