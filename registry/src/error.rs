//! Errors of the registry client, as types whose messages name what went wrong: the
//! registry, the repository, the object (tag, digest), the HTTP status and the registry's
//! own error code and message from its JSON error body.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::credentials::CredentialsError;
use super::digest::DigestError;
use super::hosts::HostsError;
use super::manifest::ManifestError;
use super::reference::ReferenceError;

/// What the client was doing, for error messages: `manifest latest in host/repo`.
/// Cheap to clone (shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation(Arc<OperationParts>);

#[derive(Debug, PartialEq, Eq)]
struct OperationParts {
    registry: String,
    repository: String,
    what: String,
}

impl Operation {
    /// An operation on `what` in `registry/repository`.
    pub fn new(registry: &str, repository: &str, what: impl Into<String>) -> Self {
        Operation(Arc::new(OperationParts {
            registry: registry.to_string(),
            repository: repository.to_string(),
            what: what.into(),
        }))
    }

    /// Registry host as named in the reference (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.0.registry
    }

    /// Repository path (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.0.repository
    }

    /// The object: `manifest v1`, `blob sha256:...`, `bytes=0-9 of blob sha256:...`.
    pub fn what(&self) -> &str {
        &self.0.what
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in {}/{}",
            self.0.what, self.0.registry, self.0.repository
        )
    }
}

/// One entry of a registry's JSON error body (`{"errors":[{"code":..,"message":..}]}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RegistryErrorEntry {
    /// Machine-readable code, e.g. `MANIFEST_UNKNOWN`.
    #[serde(default)]
    pub code: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
}

/// What a registry said in an error response body; empty when it said nothing useful.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The parsed `errors` array when the body was the registry JSON error format; else
    /// one entry with an empty code holding the start of the body (at most 200
    /// characters), or nothing.
    pub errors: Vec<RegistryErrorEntry>,
}

impl ErrorDetail {
    /// Reads a response body: the OCI JSON error format, or else a short excerpt.
    pub fn from_body(body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default)]
            errors: Vec<RegistryErrorEntry>,
        }
        if let Ok(parsed) = serde_json::from_slice::<Body>(body) {
            if !parsed.errors.is_empty() {
                return ErrorDetail {
                    errors: parsed.errors,
                };
            }
        }
        let text: String = String::from_utf8_lossy(body)
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        let errors = match text.is_empty() {
            true => Vec::new(),
            false => vec![RegistryErrorEntry {
                code: String::new(),
                message: text,
            }],
        };
        ErrorDetail { errors }
    }

    /// Whether any entry has this code.
    pub fn has_code(&self, code: &str) -> bool {
        self.errors.iter().any(|e| e.code == code)
    }
}

impl fmt::Display for ErrorDetail {
    /// `: CODE: message; CODE2: message2`, or `: <text>`, or nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.errors.is_empty() {
            return Ok(());
        }
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect();
        write!(f, ": {}", parts.join("; "))
    }
}

/// An error of the registry client.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image reference could not be parsed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A digest could not be parsed.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// docker `config.json` could not be read or used.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// A `hosts.toml` could not be read or used.
    #[error(transparent)]
    Hosts(#[from] HostsError),
    /// The registry says the object (or the repository) does not exist (HTTP 404).
    #[error("{op}: not found (HTTP {status}{detail})")]
    NotFound {
        /// What was asked for.
        op: Operation,
        /// The HTTP status (404).
        status: u16,
        /// The registry's error body.
        detail: ErrorDetail,
    },
    /// The registry refused access (HTTP 401/403), even after authenticating.
    #[error("{op}: access denied (HTTP {status}{detail}){}", hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    Unauthorized {
        /// What was asked for.
        op: Operation,
        /// The HTTP status.
        status: u16,
        /// The registry's error body.
        detail: ErrorDetail,
        /// Why Veil had no (or no usable) credentials, when it knows.
        hint: Option<String>,
    },
    /// Any other unexpected HTTP status.
    #[error("{op}: HTTP {status}{detail}")]
    Status {
        /// What was asked for.
        op: Operation,
        /// The HTTP status.
        status: u16,
        /// The registry's error body.
        detail: ErrorDetail,
    },
    /// The request could not be sent or its answer not read (connection refused, reset, TLS).
    #[error("{op}: request to {url} failed: {reason}")]
    Transport {
        /// What was asked for.
        op: Operation,
        /// The URL the request went to.
        url: String,
        /// The underlying error, with its causes.
        reason: String,
        /// Whether the request timed out.
        timed_out: bool,
    },
    /// The whole operation took longer than its deadline.
    #[error("{op}: no result within the {deadline:?} deadline")]
    Deadline {
        /// What was asked for.
        op: Operation,
        /// The deadline.
        deadline: Duration,
    },
    /// Retryable failures kept happening until the retry budget ran out.
    #[error("{op}: gave up after {attempts} attempts in {elapsed:?}; last error: {last}")]
    RetriesExhausted {
        /// What was asked for.
        op: Operation,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last attempt's error.
        last: Box<RegistryError>,
    },
    /// Content fetched whole does not have the digest it was asked for by.
    #[error("{op}: digest mismatch: expected {expected}, the registry sent {actual}")]
    DigestMismatch {
        /// What was asked for.
        op: Operation,
        /// The digest asked for (or announced).
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The registry answered something malformed or inconsistent (bad Content-Range,
    /// broken multipart body, wrong length, unparseable manifest).
    #[error("{op}: bad response: {reason}")]
    BadResponse {
        /// What was asked for.
        op: Operation,
        /// What was wrong.
        reason: String,
    },
    /// A manifest or index could not be used.
    #[error("{op}: {source}")]
    Manifest {
        /// What was asked for.
        op: Operation,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// The answer is bigger than the client accepts for this kind of object.
    #[error("{op}: larger than the {limit}-byte limit")]
    TooLarge {
        /// What was asked for.
        op: Operation,
        /// The limit in bytes.
        limit: u64,
    },
    /// Getting a bearer token from the registry's token service failed.
    #[error("{op}: getting a token from {realm} (scope {scope}) failed: {reason}{detail}")]
    Token {
        /// What the token was needed for.
        op: Operation,
        /// The token service URL.
        realm: String,
        /// The scope(s) asked for.
        scope: String,
        /// The HTTP status, when the service answered.
        status: Option<u16>,
        /// Whether trying again may help (connection problems, 5xx).
        retryable: bool,
        /// What went wrong.
        reason: String,
        /// The service's error body.
        detail: ErrorDetail,
    },
    /// A redirect could not be followed (no Location, bad URL, too many hops).
    #[error("{op}: redirect from {url}: {reason}")]
    Redirect {
        /// What was asked for.
        op: Operation,
        /// The URL that answered with the redirect.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// A read asked for bytes outside the blob.
    #[error("range {start}..{end} is outside blob {digest} of {size} bytes")]
    InvalidRange {
        /// The blob.
        digest: String,
        /// Start of the range asked for.
        start: u64,
        /// End (exclusive) of the range asked for.
        end: u64,
        /// The blob's size.
        size: u64,
    },
    /// A mirror answered a range request with the whole blob (a pull-through cache that
    /// does not hold the blob yet) and the bytes needed lie too far into it: the read goes
    /// to the next host instead of streaming the blob up to them.
    #[error("{op}: mirror {mirror} answered with the whole blob (it does not hold it yet)")]
    MirrorCold {
        /// What was asked for.
        op: Operation,
        /// The mirror's API root.
        mirror: String,
    },
    /// The HTTP client could not be set up (CA file, client certificate).
    #[error("setting up the HTTP client for {endpoint}: {reason}")]
    Setup {
        /// The endpoint (URL) it was for.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
}

impl RegistryError {
    /// Whether trying again may help: connection problems, timeouts, 5xx, 408 and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            RegistryError::Token { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Whether the error means the registry is unreachable or failing for now (what
    /// retries are for), directly or as the last error after retries.
    pub fn is_outage(&self) -> bool {
        match self {
            RegistryError::RetriesExhausted { last, .. } => last.is_outage(),
            other => other.is_retryable(),
        }
    }

    /// Whether the registry said the object does not exist (directly or as the last
    /// error after retries).
    pub fn is_not_found(&self) -> bool {
        match self {
            RegistryError::NotFound { .. } => true,
            RegistryError::RetriesExhausted { last, .. } => last.is_not_found(),
            _ => false,
        }
    }

    /// Maps the error to an `io::Error` kind for [`veil_blob::BlobSource`]
    /// callers, keeping the message.
    pub fn io_kind(&self) -> std::io::ErrorKind {
        use std::io::ErrorKind;
        match self {
            RegistryError::NotFound { .. } => ErrorKind::NotFound,
            RegistryError::Unauthorized { .. } => ErrorKind::PermissionDenied,
            RegistryError::InvalidRange { .. } => ErrorKind::InvalidInput,
            RegistryError::Deadline { .. } => ErrorKind::TimedOut,
            RegistryError::Transport {
                timed_out: true, ..
            } => ErrorKind::TimedOut,
            RegistryError::DigestMismatch { .. } | RegistryError::BadResponse { .. } => {
                ErrorKind::InvalidData
            }
            RegistryError::RetriesExhausted { last, .. } => last.io_kind(),
            _ => ErrorKind::Other,
        }
    }
}

impl From<RegistryError> for std::io::Error {
    fn from(err: RegistryError) -> Self {
        std::io::Error::new(err.io_kind(), err)
    }
}

/// Renders an error's causes on one line (reqwest hides the useful part in causes; its
/// own message only repeats the URL, which the caller already names).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    match err.source() {
        Some(first) => veil_blob::display::error_chain(first),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_formats() {
        let d = ErrorDetail::from_body(
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#,
        );
        assert!(d.has_code("MANIFEST_UNKNOWN"));
        assert_eq!(d.to_string(), ": MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(ErrorDetail::from_body(b"").to_string(), "");
        assert_eq!(
            ErrorDetail::from_body(b"  upstream\n exploded ").to_string(),
            ": upstream exploded"
        );
        assert_eq!(
            ErrorDetail::from_body(&[b'x'; 500]).errors[0].message.len(),
            200
        );
    }

    #[test]
    fn messages_name_everything() {
        let err = RegistryError::NotFound {
            op: Operation::new("127.0.0.1:5000", "app", "manifest nope"),
            status: 404,
            detail: ErrorDetail::from_body(
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
        };
        assert_eq!(
            err.to_string(),
            "manifest nope in 127.0.0.1:5000/app: not found (HTTP 404: MANIFEST_UNKNOWN: manifest unknown)"
        );
        assert!(err.is_not_found());
        assert_eq!(err.io_kind(), std::io::ErrorKind::NotFound);
        let status = |s| RegistryError::Status {
            op: Operation::new("r", "p", "x"),
            status: s,
            detail: ErrorDetail::default(),
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(400).is_retryable());
    }
}
