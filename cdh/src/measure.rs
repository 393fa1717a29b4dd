//! After a successful pull: record the image in the TEE's runtime measurements through
//! the attestation agent, as CDH does (PROTOCOLS.md §8.3a; guest-components
//! `confidential-data-hub/hub/src/hub.rs`), so a verifier can later tell which image runs.
//!
//! `attestation_agent.AttestationAgentService/ExtendRuntimeMeasurement` with `Domain`
//! `github.com/confidential-containers`, `Operation` `PullImage` and `Content`
//! `{"image":"<image_url>", "digest":"<manifest digest>"}` — byte for byte CDH's text (one
//! space after the comma), with the values JSON-escaped (CDH pastes them in unescaped;
//! the two agree for every valid reference and digest). 10 s timeout. `NOT_SUPPORTED` and
//! `NOT_ENABLED` are warnings; no agent socket means skipped, with a warning. Any other
//! failure is an error: like CDH, the caller should fail the pull rather than run an image
//! the measurements do not show.

use std::path::Path;
use std::time::Duration;

use prost::Message;
use thiserror::Error;

use crate::client::{unary_call, CallError};
use crate::proto::{
    ExtendRuntimeMeasurementRequest, ExtendRuntimeMeasurementResponse, RuntimeMeasurementResult,
};

/// The attestation agent's usual socket (CDH's `[aa] aa_socket` default).
pub const DEFAULT_AA_SOCKET: &str =
    "/run/confidential-containers/attestation-agent/attestation-agent.sock";
/// The attestation agent's service.
pub const AA_SERVICE: &str = "attestation_agent.AttestationAgentService";
/// The method.
pub const EXTEND_METHOD: &str = "ExtendRuntimeMeasurement";
/// The event domain (Trustee's confidential containers event spec).
pub const PULL_EVENT_DOMAIN: &str = "github.com/confidential-containers";
/// The event operation.
pub const PULL_EVENT_OPERATION: &str = "PullImage";
/// How long the call may take (CDH's value).
pub const MEASUREMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of the measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeasurementOutcome {
    /// The attestation agent extended the measurement.
    Recorded,
    /// The platform has no runtime measurement (warned).
    NotSupported,
    /// Runtime measurement is disabled in the attestation agent (warned).
    NotEnabled,
    /// No attestation agent socket: nothing recorded (warned).
    Skipped,
}

/// The measurement could not be recorded.
#[derive(Debug, Error)]
#[error("recording the pull of {image} ({digest}) in the runtime measurements: {source}")]
pub struct MeasurementError {
    /// The image.
    pub image: String,
    /// Its manifest digest.
    pub digest: String,
    /// The attestation agent call's failure.
    pub source: CallError,
}

/// The event `Content` for a pull (CDH's exact text).
pub fn pull_event_content(image_url: &str, manifest_digest: &str) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\"image\":{}, \"digest\":{}}}",
        quote(image_url),
        quote(manifest_digest)
    )
}

/// Records a successful pull of `image_url` (manifest `manifest_digest`) with the
/// attestation agent on `aa_socket`. Call it after every successful `PullImage`, before
/// answering it.
pub async fn record_image_pull(
    aa_socket: &Path,
    image_url: &str,
    manifest_digest: &str,
) -> Result<MeasurementOutcome, MeasurementError> {
    if !aa_socket.exists() {
        tracing::warn!(socket = %aa_socket.display(), image = image_url, "no attestation agent socket: the pull is not recorded in the runtime measurements");
        return Ok(MeasurementOutcome::Skipped);
    }
    let request = ExtendRuntimeMeasurementRequest {
        domain: PULL_EVENT_DOMAIN.to_string(),
        operation: PULL_EVENT_OPERATION.to_string(),
        content: pull_event_content(image_url, manifest_digest),
        register_index: None,
    };
    let error = |source| MeasurementError {
        image: image_url.to_string(),
        digest: manifest_digest.to_string(),
        source,
    };
    let payload = unary_call(
        aa_socket,
        AA_SERVICE,
        EXTEND_METHOD,
        request.encode_to_vec(),
        MEASUREMENT_TIMEOUT,
    )
    .await
    .map_err(error)?;
    let response = ExtendRuntimeMeasurementResponse::decode(&payload[..]).map_err(|e| {
        error(CallError::BadAnswer {
            socket: aa_socket.to_path_buf(),
            service: AA_SERVICE.into(),
            method: EXTEND_METHOD.into(),
            reason: format!("not an ExtendRuntimeMeasurementResponse: {e}"),
        })
    })?;
    match RuntimeMeasurementResult::from_i32(response.result) {
        Some(RuntimeMeasurementResult::Ok) => {
            tracing::info!(
                image = image_url,
                digest = manifest_digest,
                "pull recorded in the runtime measurements"
            );
            Ok(MeasurementOutcome::Recorded)
        }
        Some(RuntimeMeasurementResult::NotSupported) => {
            tracing::warn!(
                image = image_url,
                "the platform does not support runtime measurement: the pull is not recorded"
            );
            Ok(MeasurementOutcome::NotSupported)
        }
        Some(RuntimeMeasurementResult::NotEnabled) => {
            tracing::warn!(image = image_url, "runtime measurement is not enabled in the attestation agent: the pull is not recorded");
            Ok(MeasurementOutcome::NotEnabled)
        }
        None => Err(error(CallError::BadAnswer {
            socket: aa_socket.to_path_buf(),
            service: AA_SERVICE.into(),
            method: EXTEND_METHOD.into(),
            reason: format!("unknown RuntimeMeasurementResult {}", response.result),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_cdh_text() {
        let content = pull_event_content("registry.example/app:1", "sha256:ab");
        assert_eq!(
            content,
            r#"{"image":"registry.example/app:1", "digest":"sha256:ab"}"#
        );
        let value: serde_json::Value = serde_json::from_str(&content).unwrap();
        assert_eq!(value["digest"], "sha256:ab");
        // Hostile input stays valid JSON.
        let odd = pull_event_content("a\"b", "c");
        let value: serde_json::Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(value["image"], "a\"b");
    }
}
