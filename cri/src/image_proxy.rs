//! The CRI image service kubelet talks to when started with `--image-service-endpoint`
//! pointing at Veil: every call is forwarded unchanged to containerd's CRI socket, and a
//! `PullImage` first records its credentials (a pod's imagePullSecret, or, when it
//! carries none, what the credential provider answers) in [`PodCredentials`], so that
//! Veil's lazy fetches of that image's layers, which run while containerd pulls, can
//! authenticate. The provider's credential also goes into the `PullImage` forwarded to
//! containerd (as kubelet does with its own credential providers): containerd fetches
//! the manifest and config, so it needs it too. Credentials are never logged; a bad `AuthConfig` is refused with
//! `INVALID_ARGUMENT` naming what is wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use k8s_cri::v1::{
    ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse,
};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};
use veil_registry::{Credential, Reference};

use crate::auth_config::{auth_config_of, credential_of};
use crate::credential_provider::CredentialProvider;
use crate::error::CriError;
use crate::pod_credentials::PodCredentials;

/// The forwarding image service.
#[derive(Clone)]
pub struct ImageProxy {
    upstream: ImageServiceClient<Channel>,
    credentials: Arc<PodCredentials>,
    provider: Option<CredentialProvider>,
}

/// Where a pull's credentials came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Pod,
    Provider,
    None,
}

impl ImageProxy {
    /// A proxy to containerd's CRI socket `containerd_socket` (connected on first use),
    /// recording credentials in `credentials`, asking `provider` for images pulled
    /// without any.
    pub fn new(
        containerd_socket: &Path,
        credentials: Arc<PodCredentials>,
        provider: Option<CredentialProvider>,
    ) -> Result<Self, CriError> {
        let socket: PathBuf = containerd_socket.to_path_buf();
        let upstream_error = |reason: String| CriError::Upstream {
            socket: socket.clone(),
            reason,
        };
        // The URI is not used: every connection goes to the socket.
        let endpoint = Endpoint::try_from("http://containerd.invalid")
            .map_err(|e| upstream_error(e.to_string()))?;
        let target = socket.clone();
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            tokio::net::UnixStream::connect(target.clone())
        }));
        Ok(Self {
            upstream: ImageServiceClient::new(channel),
            credentials,
            provider,
        })
    }

    /// The tonic service of this proxy.
    pub fn into_service(self) -> ImageServiceServer<Self> {
        ImageServiceServer::new(self)
    }

    /// Records the credentials of a pull of `image` (from `auth`, else the provider);
    /// the provider's credential is returned too, to forward to containerd.
    async fn record(
        &self,
        image: &str,
        auth: Option<&k8s_cri::v1::AuthConfig>,
    ) -> Result<(Source, Option<Credential>), CriError> {
        let reference = Reference::parse(image).map_err(|e| CriError::Reference {
            reference: image.to_string(),
            reason: e.reason,
        })?;
        let (host, repository) = (reference.registry(), reference.repository());
        let from_pod = match auth {
            Some(auth) => credential_of(auth).map_err(|reason| CriError::AuthConfig {
                image: image.to_string(),
                reason,
            })?,
            None => None,
        };
        if let Some(credential) = from_pod {
            self.credentials
                .record_for_lifetime(host, repository, credential);
            return Ok((Source::Pod, None));
        }
        if let Some(provider) = &self.provider {
            if let Some((credential, lifetime)) =
                provider.credential(image, host, repository).await?
            {
                match lifetime {
                    Some(l) => self
                        .credentials
                        .record(host, repository, credential.clone(), l),
                    None => {
                        self.credentials
                            .record_for_lifetime(host, repository, credential.clone())
                    }
                }
                return Ok((Source::Provider, Some(credential)));
            }
        }
        Ok((Source::None, None))
    }
}

#[tonic::async_trait]
impl ImageService for ImageProxy {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        self.upstream
            .clone()
            .list_images(request.into_inner())
            .await
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        self.upstream
            .clone()
            .image_status(request.into_inner())
            .await
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let request = request.into_inner();
        let image = request
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image.is_empty() {
            return Err(Status::invalid_argument("PullImage without an image"));
        }
        let mut request = request;
        let source = match self.record(&image, request.auth.as_ref()).await {
            Ok((source, provided)) => {
                if let Some(credential) = provided {
                    request.auth = Some(auth_config_of(&credential));
                }
                source
            }
            Err(e @ (CriError::AuthConfig { .. } | CriError::Reference { .. })) => {
                return Err(Status::invalid_argument(e.to_string()))
            }
            Err(e) => {
                // A failing provider leaves the pull to what else there is (config.json,
                // anonymous): the error is logged, the pull goes on.
                tracing::warn!(%image, error = %e, "credential provider failed");
                Source::None
            }
        };
        tracing::info!(%image, credentials = ?source, "PullImage through Veil's CRI proxy");
        self.upstream.clone().pull_image(request).await
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        self.upstream
            .clone()
            .remove_image(request.into_inner())
            .await
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        self.upstream
            .clone()
            .image_fs_info(request.into_inner())
            .await
    }
}
