//! `veil keyprovider serve`: the ocicrypt keyprovider gRPC API
//! (`keyprovider.KeyProviderService`, `WrapKey` and `UnWrapKey`) for the
//! `attestation-agent` provider, so that tools speaking the keyprovider protocol (skopeo,
//! imgcrypt, ocicrypt-rs) can wrap and unwrap layer keys with Veil.
//!
//! Each call carries the keyprovider protocol's JSON in its single bytes field; the JSON
//! is served by [`veil_keyprovider::provider_protocol::handle`] (Go base64 strings and
//! Rust integer arrays both understood, answered in kind). `WrapKey` takes the KEK from the
//! `keypath` file named in the wrap parameters (as coco_keyprovider does) or else from the
//! KEK sources; `UnWrapKey` takes it from the KEK sources of `[decryption]` in the same
//! config file as veil-snapshotter (`kbs` after attestation, `cdh`, `file`). A call whose
//! JSON `op` does not match the method, or whose request cannot be served, gets a gRPC
//! error naming what was wrong. No key bytes are logged.
//!
//! The address is a unix socket path (optionally `unix://PATH`) or `host:port`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use tonic::{Request, Response, Status};
use veil_daemon::signals::shutdown_signal;
use veil_daemon::socket::bind_unix;
use veil_keyprovider::kek::KekChain;
use veil_keyprovider::provider_protocol::{self, ProtocolError};
use veil_proto::keyprovider::key_provider_service_server::{
    KeyProviderService, KeyProviderServiceServer,
};
use veil_proto::keyprovider::{KeyProviderKeyWrapProtocolInput, KeyProviderKeyWrapProtocolOutput};

/// Where `veil keyprovider serve` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// A unix socket at this path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::str::FromStr for ListenAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Tcp(addr));
        }
        if s.contains('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        if let Some((host, port)) = s.rsplit_once(':') {
            if host == "localhost" {
                let port: u16 = port
                    .parse()
                    .map_err(|_| format!("{s:?}: the port is not a number"))?;
                return Ok(Self::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
            }
        }
        Err(format!(
            "{s:?} is neither a unix socket path (with a '/') nor an IP:PORT"
        ))
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// The keyprovider service over a KEK chain.
pub struct KeyProvider {
    keks: Arc<KekChain>,
}

impl KeyProvider {
    /// A service unwrapping (and wrapping without `keypath`) with the KEKs of `keks`.
    pub fn new(keks: Arc<KekChain>) -> Self {
        Self { keks }
    }

    /// The gRPC service, to add to a tonic server.
    pub fn into_service(self) -> KeyProviderServiceServer<Self> {
        KeyProviderServiceServer::new(self)
    }

    async fn serve(&self, method: &str, op: &str, input: &[u8]) -> Result<Vec<u8>, Status> {
        let asked = serde_json::from_slice::<serde_json::Value>(input)
            .ok()
            .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_string));
        match asked.as_deref() {
            Some(o) if o == op => {}
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "{method}: the request's op is {other:?}; {method} serves op {op:?}"
                )))
            }
            // Not JSON, or no op: the protocol handler names what is wrong.
            None => {}
        }
        match provider_protocol::handle(input, &self.keks).await {
            Ok(answer) => {
                tracing::info!(method, "keyprovider request served");
                Ok(answer)
            }
            Err(e) => {
                tracing::warn!(method, error = %e, "keyprovider request refused");
                Err(status_of(method, &e))
            }
        }
    }
}

/// The gRPC status of a refused request: bad input is `INVALID_ARGUMENT`, a KEK that
/// cannot be obtained `FAILED_PRECONDITION`; the message names the method and the cause.
fn status_of(method: &str, e: &ProtocolError) -> Status {
    let message = format!("{method} ({} provider): {e}", provider_protocol::PROVIDER);
    match e {
        ProtocolError::Kek(_) => Status::failed_precondition(message),
        _ => Status::invalid_argument(message),
    }
}

#[tonic::async_trait]
impl KeyProviderService for KeyProvider {
    async fn wrap_key(
        &self,
        request: Request<KeyProviderKeyWrapProtocolInput>,
    ) -> Result<Response<KeyProviderKeyWrapProtocolOutput>, Status> {
        let input = request.into_inner().key_provider_key_wrap_protocol_input;
        let output = self.serve("WrapKey", "keywrap", &input).await?;
        Ok(Response::new(KeyProviderKeyWrapProtocolOutput {
            key_provider_key_wrap_protocol_output: output,
        }))
    }

    async fn un_wrap_key(
        &self,
        request: Request<KeyProviderKeyWrapProtocolInput>,
    ) -> Result<Response<KeyProviderKeyWrapProtocolOutput>, Status> {
        let input = request.into_inner().key_provider_key_wrap_protocol_input;
        let output = self.serve("UnWrapKey", "keyunwrap", &input).await?;
        Ok(Response::new(KeyProviderKeyWrapProtocolOutput {
            key_provider_key_wrap_protocol_output: output,
        }))
    }
}

/// Serves `provider` at `address` until SIGTERM or SIGINT. A unix socket file left by an
/// earlier run is replaced; one another process still answers on is refused. The socket
/// file is removed on the way out.
pub async fn serve(provider: KeyProvider, address: &ListenAddress) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let server = tonic::transport::Server::builder().add_service(provider.into_service());
    match address {
        ListenAddress::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            tracing::info!(address = %listener.local_addr()?, "keyprovider ready");
            server
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown,
                )
                .await
                .context("serving the keyprovider API")?;
        }
        ListenAddress::Unix(path) => {
            let listener = bind_unix(path).await?;
            tracing::info!(address = %path.display(), "keyprovider ready");
            let result = server
                .serve_with_incoming_shutdown(veil_daemon::grpc_unix::incoming(listener), shutdown)
                .await;
            let _ = std::fs::remove_file(path);
            result.context("serving the keyprovider API")?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum KeyproviderCommand {
    /// Serve ocicrypt's keyprovider gRPC API (keyprovider.KeyProviderService: WrapKey,
    /// UnWrapKey) for provider `attestation-agent` until SIGTERM or SIGINT.
    ///
    /// UnWrapKey opens CoCo attestation-agent annotation packets with the KEK their kid
    /// names, from the KEK sources of the config's [decryption] section (kek_sources:
    /// kbs after attestation, cdh, file); WrapKey wraps with the KEK file the wrap
    /// parameters name (keyid=kbs:///repo/type/tag::keypath=FILE, as coco_keyprovider
    /// takes them) or else the KEK sources. Name it in OCICRYPT_KEYPROVIDER_CONFIG as
    /// {"key-providers": {"attestation-agent": {"grpc": "ADDRESS"}}}.
    Serve {
        /// A unix socket path (or unix://PATH) or IP:PORT to listen on.
        #[arg(long, value_name = "ADDR")]
        address: ListenAddress,
        /// veil-snapshotter's config file, for [decryption] (default: /etc/veil/config.toml
        /// if it exists).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Runs `veil keyprovider serve`.
pub fn run_keyprovider(command: KeyproviderCommand) -> ExitCode {
    let KeyproviderCommand::Serve { address, config } = command;
    // It holds KEKs and unwrapped layer options: no core dumps.
    if let Err(e) = veil_daemon::no_core_dumps::forbid_core_dumps() {
        eprintln!("veil keyprovider serve: {e}");
        return ExitCode::FAILURE;
    }
    let config = match veil_daemon::config::Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("veil keyprovider serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    crate::init_logging(&config.log_level);
    let served = crate::run::block_on("keyprovider serve", async {
        let chain = veil_daemon::wiring::kek_chain(&config)?;
        serve(KeyProvider::new(Arc::new(chain)), &address).await
    });
    match served {
        Some(()) => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            "/run/veil/kp.sock".parse::<ListenAddress>().unwrap(),
            ListenAddress::Unix("/run/veil/kp.sock".into())
        );
        assert_eq!(
            "unix:///run/kp.sock".parse::<ListenAddress>().unwrap(),
            ListenAddress::Unix("/run/kp.sock".into())
        );
        assert_eq!(
            "127.0.0.1:50000".parse::<ListenAddress>().unwrap(),
            ListenAddress::Tcp("127.0.0.1:50000".parse().unwrap())
        );
        assert_eq!(
            "localhost:50000".parse::<ListenAddress>().unwrap(),
            ListenAddress::Tcp("127.0.0.1:50000".parse().unwrap())
        );
        assert!("kp.sock".parse::<ListenAddress>().is_err());
    }
}
