//! The protobuf messages Veil reads or writes on ttrpc sockets, derived with prost by hand
//! from their `.proto` files (each message names its origin). Only the messages Veil itself
//! decodes are here: every other call through the front door is forwarded as opaque bytes.
//!
//! Field names follow Rust style; the wire identity is the tag number and type, which are
//! those of the `.proto` (e.g. CDH's `string ResourcePath = 1` is `resource_path`, tag 1).

/// `ttrpc.Request` (containerd/ttrpc `request.proto`): the payload of a request frame.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// Fully qualified service, e.g. `api.ImagePullService`.
    #[prost(string, tag = "1")]
    pub service: String,
    /// Method name, e.g. `PullImage`.
    #[prost(string, tag = "2")]
    pub method: String,
    /// The method's request message, encoded.
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    /// The caller's timeout in nanoseconds (0: none).
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
    /// Request metadata.
    #[prost(message, repeated, tag = "5")]
    pub metadata: Vec<KeyValue>,
}

/// `ttrpc.KeyValue` (containerd/ttrpc `request.proto`): one metadata entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `ttrpc.Response` (containerd/ttrpc `request.proto`): the payload of a response frame.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// The call's status (absent or code 0: success).
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    /// The method's response message, encoded.
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// `google.rpc.Status` (googleapis `google/rpc/status.proto`, as ttrpc carries it).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// A `google.rpc.Code` value (see [`code`]).
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// Developer-facing message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Error details.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

/// `google.protobuf.Any` (protobuf `google/protobuf/any.proto`), as in [`Status::details`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    /// Type URL of the packed message.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The packed message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// The `google.rpc.Code` values Veil uses (googleapis `google/rpc/code.proto`).
pub mod code {
    /// Success.
    pub const OK: i32 = 0;
    /// The argument is invalid.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// The deadline passed before the call finished.
    pub const DEADLINE_EXCEEDED: i32 = 4;
    /// Something was not found.
    pub const NOT_FOUND: i32 = 5;
    /// Not implemented.
    pub const UNIMPLEMENTED: i32 = 12;
    /// Internal error (what CDH answers for every failure).
    pub const INTERNAL: i32 = 13;
    /// The service is unavailable (Veil: the upstream CDH cannot be reached).
    pub const UNAVAILABLE: i32 = 14;

    /// The code's name as in `code.proto`, for messages.
    pub fn name(code: i32) -> &'static str {
        match code {
            0 => "OK",
            1 => "CANCELLED",
            2 => "UNKNOWN",
            3 => "INVALID_ARGUMENT",
            4 => "DEADLINE_EXCEEDED",
            5 => "NOT_FOUND",
            6 => "ALREADY_EXISTS",
            7 => "PERMISSION_DENIED",
            8 => "RESOURCE_EXHAUSTED",
            9 => "FAILED_PRECONDITION",
            10 => "ABORTED",
            11 => "OUT_OF_RANGE",
            12 => "UNIMPLEMENTED",
            13 => "INTERNAL",
            14 => "UNAVAILABLE",
            15 => "DATA_LOSS",
            16 => "UNAUTHENTICATED",
            _ => "unknown code",
        }
    }
}

/// `api.ImagePullRequest` (guest-components `protos/confidential-data-hub/api.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImagePullRequest {
    /// The image reference to pull.
    #[prost(string, tag = "1")]
    pub image_url: String,
    /// The bundle directory (created by the caller); the rootfs goes to `<bundle_path>/rootfs`.
    #[prost(string, tag = "2")]
    pub bundle_path: String,
}

/// `api.ImagePullResponse` (guest-components `protos/confidential-data-hub/api.proto`;
/// kata-containers' copy has no field, which is wire-compatible).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImagePullResponse {
    /// The pulled manifest's digest.
    #[prost(string, tag = "1")]
    pub manifest_digest: String,
}

/// `api.GetResourceRequest` (guest-components `protos/confidential-data-hub/api.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetResourceRequest {
    /// `ResourcePath`: a KBS resource URI, e.g. `kbs:///default/key/1`.
    #[prost(string, tag = "1")]
    pub resource_path: String,
}

/// `api.GetResourceResponse` (guest-components `protos/confidential-data-hub/api.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetResourceResponse {
    /// `Resource`: the resource's bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub resource: Vec<u8>,
}

/// `attestation_agent.ExtendRuntimeMeasurementRequest` (guest-components
/// `protos/attestation-agent/attestation-agent.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtendRuntimeMeasurementRequest {
    /// `Domain` of the event entry.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// `Operation` the entry records.
    #[prost(string, tag = "2")]
    pub operation: String,
    /// `Content` of the entry.
    #[prost(string, tag = "3")]
    pub content: String,
    /// `RegisterIndex` (optional): which PCR / RTMR to extend.
    #[prost(uint64, optional, tag = "4")]
    pub register_index: Option<u64>,
}

/// `attestation_agent.RuntimeMeasurementResult` (guest-components
/// `protos/attestation-agent/attestation-agent.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RuntimeMeasurementResult {
    /// The measurement was extended.
    Ok = 0,
    /// The platform has no runtime measurement.
    NotSupported = 1,
    /// Runtime measurement is disabled in the attestation agent's config.
    NotEnabled = 2,
}

/// `attestation_agent.ExtendRuntimeMeasurementResponse` (guest-components
/// `protos/attestation-agent/attestation-agent.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtendRuntimeMeasurementResponse {
    /// `Result`: a [`RuntimeMeasurementResult`].
    #[prost(enumeration = "RuntimeMeasurementResult", tag = "1")]
    pub result: i32,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn wire_bytes_match_the_protos() {
        // Hand-encoded: field 1 (len) "a", field 2 (len) "b", field 4 (varint) 5.
        let req = Request {
            service: "a".into(),
            method: "b".into(),
            payload: Vec::new(),
            timeout_nano: 5,
            metadata: Vec::new(),
        };
        assert_eq!(req.encode_to_vec(), [0x0a, 1, b'a', 0x12, 1, b'b', 0x20, 5]);
        let status = Response {
            status: Some(Status {
                code: code::INTERNAL,
                message: "x".into(),
                details: Vec::new(),
            }),
            payload: Vec::new(),
        };
        assert_eq!(status.encode_to_vec(), [0x0a, 5, 0x08, 13, 0x12, 1, b'x']);
        let get = GetResourceRequest {
            resource_path: "kbs:///a/b/c".into(),
        };
        assert_eq!(&get.encode_to_vec()[..2], [0x0a, 12]);
        let extend = ExtendRuntimeMeasurementRequest {
            domain: String::new(),
            operation: String::new(),
            content: String::new(),
            register_index: Some(0),
        };
        // An optional field is written even when it holds the default.
        assert_eq!(extend.encode_to_vec(), [0x20, 0]);
    }
}
