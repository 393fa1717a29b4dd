//! The KBS attestation path: a native client of the Trustee KBS protocol (RCAR 0.4.0) on
//! `kbs-types`, the TEE key of a session, the attesters, and a [`KekSource`] on top.
//!
//! - [`client`]: auth → challenge → attest → token and session cookie → resource GET;
//! - [`tee_key`]: the fresh TEE key pair (EC P-256 or RSA) and the JWE answer decryption;
//! - [`attester`]: `sample`, and TDX / SEV-SNP through Linux configfs-tsm;
//! - [`jcs`]: RFC 8785 canonical JSON, which the evidence binding hashes.

pub mod attester;
pub mod client;
pub mod jcs;
pub mod metrics;
pub mod tee_key;

use std::sync::Arc;

use futures::future::BoxFuture;

pub use client::{KbsClient, KbsClientConfig, KbsError, KbsRefusal};

use crate::kek::{KekError, KekSource, Kid};
use crate::secret::SecretBytes;

/// KEKs from a KBS: the resource a kid names, released after attestation.
#[derive(Debug, Clone)]
pub struct KbsKekSource {
    client: Arc<KbsClient>,
}

impl KbsKekSource {
    /// A source on `client` (whose session is shared by every request).
    pub fn new(client: Arc<KbsClient>) -> Self {
        Self { client }
    }

    /// The client.
    pub fn client(&self) -> &Arc<KbsClient> {
        &self.client
    }
}

impl KekSource for KbsKekSource {
    fn name(&self) -> String {
        format!("kbs:{}", self.client.url())
    }

    fn get<'a>(&'a self, kid: &'a Kid) -> BoxFuture<'a, Result<SecretBytes, KekError>> {
        Box::pin(async move {
            self.client.get_resource(kid).await.map_err(|e| match &e {
                KbsError::Refused { refusal, .. } if refusal.status == 404 => {
                    KekError::NotFound(e.to_string())
                }
                _ => KekError::Failed(e.to_string()),
            })
        })
    }
}
