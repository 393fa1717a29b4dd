//! A KEK source over the Confidential Data Hub's ttrpc socket:
//! `api.GetResourceService/GetResource {ResourcePath}` → `{Resource}`.
//!
//! CDH's handler parses `ResourcePath` as a whole KBS resource URI (`ResourceUri::try_from`
//! in guest-components: `kbs://<kbs-host>/<repo>/<type>/<tag>` or `kbs+<plugin>://…`, the
//! host ignored for its configured KBS), exactly what a `kid` is. So the kid is sent as it
//! is, e.g. `kbs:///default/image_key/nginx` (kata-agent itself sends `kbs://` + a path).
//! Attestation stays with the guest's own attestation agent; the KEK never touches disk or
//! logs. CDH answers every failure as `INTERNAL` with a short message (`[CDH] [ERROR]: Get
//! Resource failed`), so a missing resource cannot be told from a refused one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use prost::Message;
use veil_keyprovider::kek::{KekError, KekSource, Kid, MAX_KEK_LEN};
use veil_keyprovider::secret::SecretBytes;
use zeroize::Zeroize;

use crate::client::{unary_call, CallError};
use crate::proto::{code, GetResourceRequest, GetResourceResponse};

/// CDH's resource service.
pub const GET_RESOURCE_SERVICE: &str = "api.GetResourceService";
/// Its method.
pub const GET_RESOURCE_METHOD: &str = "GetResource";
/// Default time a `GetResource` call may take (CDH may attest first; kata-agent's own
/// `cdh_api_timeout` default is 50 s).
pub const DEFAULT_GET_RESOURCE_TIMEOUT: Duration = Duration::from_secs(50);

/// KEKs from CDH's `GetResource` on its ttrpc socket.
#[derive(Clone)]
pub struct CdhTtrpcKekSource {
    socket: PathBuf,
    timeout: Duration,
}

impl fmt::Debug for CdhTtrpcKekSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CdhTtrpcKekSource")
            .field("socket", &self.socket)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CdhTtrpcKekSource {
    /// A source asking the CDH on `socket` (its own socket: the upstream one when Veil's
    /// front door holds kata-agent's), each call bounded by `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    /// The socket asked.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn fetch(&self, kid: &Kid) -> Result<SecretBytes, KekError> {
        let request = GetResourceRequest {
            resource_path: kid.uri.clone(),
        };
        let answer = unary_call(
            &self.socket,
            GET_RESOURCE_SERVICE,
            GET_RESOURCE_METHOD,
            request.encode_to_vec(),
            self.timeout,
        )
        .await;
        let mut payload = match answer {
            Ok(payload) => payload,
            Err(CallError::Connect { socket, source }) => {
                return Err(KekError::Failed(format!(
                    "cannot connect to the Confidential Data Hub at {}: {source}",
                    socket.display()
                )))
            }
            Err(
                e @ CallError::Status {
                    code: code::NOT_FOUND,
                    ..
                },
            ) => return Err(KekError::NotFound(format!("GetResource({}): {e}", kid.uri))),
            Err(e) => return Err(KekError::Failed(format!("GetResource({}): {e}", kid.uri))),
        };
        let decoded = GetResourceResponse::decode(&payload[..]);
        payload.zeroize();
        let mut response = decoded.map_err(|e| {
            KekError::Failed(format!(
                "GetResource({}) on {}: the answer is not an api.GetResourceResponse: {e}",
                kid.uri,
                self.socket.display()
            ))
        })?;
        let kek = SecretBytes::new(std::mem::take(&mut response.resource));
        if kek.is_empty() {
            return Err(KekError::Failed(format!(
                "GetResource({}) on {}: the resource is empty",
                kid.uri,
                self.socket.display()
            )));
        }
        if kek.len() > MAX_KEK_LEN {
            return Err(KekError::Failed(format!(
                "GetResource({}) on {}: a {}-byte resource is not a KEK",
                kid.uri,
                self.socket.display(),
                kek.len()
            )));
        }
        Ok(kek)
    }
}

impl KekSource for CdhTtrpcKekSource {
    fn name(&self) -> String {
        format!("cdh-ttrpc:{}", self.socket.display())
    }

    fn get<'a>(&'a self, kid: &'a Kid) -> BoxFuture<'a, Result<SecretBytes, KekError>> {
        Box::pin(self.fetch(kid))
    }
}
