//! The JSON messages of the ocicrypt keyprovider protocol (PROTOCOLS.md §2.2) for the
//! `attestation-agent` provider: what travels inside the single bytes field of
//! `keyprovider.KeyProviderService/WrapKey` and `/UnWrapKey`. The gRPC transport (and
//! `veil keyprovider serve`) sits on top of [`handle`].
//!
//! Byte fields (`optsdata`, `annotation`, the `Parameters` values) come as Go writes them
//! (base64 strings) or as the Rust CoCo tools write them (arrays of integers); both are
//! read, and the answer uses the encoding the request used.
//!
//! - `keywrap`: `keywrapparams.ec.Parameters["attestation-agent"][0]` holds
//!   coco_keyprovider's parameters, `k=v` pairs joined by `::`: `keyid=kbs:///repo/type/tag`
//!   (required) and `keypath=<file of the 32-byte KEK>` (else the KEK sources are asked for
//!   the keyid). The answer's `annotation` is a v1 annotation packet (AES-256-GCM).
//! - `keyunwrap`: `keyunwrapparams.annotation` is a packet; its kid's KEK comes from the
//!   KEK sources; the answer's `optsdata` is the private options JSON.

use serde_json::{json, Map, Value};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::aa_packet::{AaPacketError, AnnotationPacket};
use crate::kek::{KekChain, KekChainError, Kid};
use crate::secret::{b64_decode, b64_encode, SecretBytes};

/// The provider name this protocol handler serves.
pub const PROVIDER: &str = "attestation-agent";
/// Largest KEK file read for `keypath`.
const MAX_KEK_FILE: u64 = 4096;

/// A request that cannot be served. Holds no key or options bytes.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// Not a keyprovider protocol message.
    #[error("malformed keyprovider request: {0}")]
    Malformed(String),
    /// An `op` other than keywrap / keyunwrap.
    #[error("unsupported keyprovider op {0:?} (keywrap, keyunwrap)")]
    UnsupportedOp(String),
    /// Wrap parameters that cannot be used.
    #[error("attestation-agent wrap parameters: {0}")]
    Parameters(String),
    /// The packet could not be made or opened.
    #[error(transparent)]
    Packet(#[from] AaPacketError),
    /// No KEK for the kid.
    #[error(transparent)]
    Kek(#[from] KekChainError),
}

/// How the request wrote bytes (and so how the answer writes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Base64,
    Array,
}

fn bytes_of(value: &Value, what: &str) -> Result<(Vec<u8>, Encoding), ProtocolError> {
    match value {
        Value::String(text) => b64_decode(text)
            .map(|b| (b, Encoding::Base64))
            .map_err(|e| ProtocolError::Malformed(format!("{what} is not base64 ({e})"))),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_u64().filter(|n| *n <= 255).map(|n| n as u8))
            .collect::<Option<Vec<u8>>>()
            .map(|b| (b, Encoding::Array))
            .ok_or_else(|| ProtocolError::Malformed(format!("{what} is not an array of bytes"))),
        _ => Err(ProtocolError::Malformed(format!(
            "{what} is neither a base64 string nor an array of bytes"
        ))),
    }
}

fn bytes_value(bytes: &[u8], encoding: Encoding) -> Value {
    match encoding {
        Encoding::Base64 => Value::String(b64_encode(bytes)),
        Encoding::Array => Value::Array(bytes.iter().map(|b| json!(b)).collect()),
    }
}

/// The wrap parameters: `keyid` and optionally `keypath`.
fn wrap_parameters(params: &Value) -> Result<(Kid, Option<String>, Encoding), ProtocolError> {
    let list = params
        .pointer(&format!("/Parameters/{PROVIDER}"))
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| {
            ProtocolError::Parameters(format!(
                "keywrapparams.ec.Parameters has no {PROVIDER:?} entry"
            ))
        })?;
    let (raw, encoding) = bytes_of(&list[0], "the provider parameters")?;
    let text =
        String::from_utf8(raw).map_err(|_| ProtocolError::Parameters("not UTF-8 text".into()))?;
    let mut keyid = None;
    let mut keypath = None;
    for pair in text.split("::").filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("keyid", v)) => keyid = Some(v.to_string()),
            Some(("keypath", v)) => keypath = Some(v.to_string()),
            Some(("algorithm", "A256GCM")) => {}
            Some(("algorithm", other)) => {
                return Err(ProtocolError::Parameters(format!(
                    "algorithm {other:?}: only A256GCM is written"
                )))
            }
            Some(("sample", _)) => {
                return Err(ProtocolError::Parameters(
                    "sample=true (the public sample KEK) is not supported: give keyid and a KEK"
                        .into(),
                ))
            }
            _ => {
                return Err(ProtocolError::Parameters(format!(
                    "unknown parameter {:?}",
                    pair.split('=').next().unwrap_or(pair)
                )))
            }
        }
    }
    let keyid = keyid.ok_or_else(|| {
        ProtocolError::Parameters("no keyid (a KBS resource URI, kbs:///repo/type/tag)".into())
    })?;
    let kid = Kid::parse(&keyid).map_err(|e| ProtocolError::Parameters(e.to_string()))?;
    Ok((kid, keypath, encoding))
}

fn read_kek_file(path: &str) -> Result<SecretBytes, ProtocolError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| ProtocolError::Parameters(format!("keypath {path}: {e}")))?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEK_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| ProtocolError::Parameters(format!("keypath {path}: {e}")))?;
    Ok(SecretBytes::new(std::mem::take(&mut *bytes)))
}

/// Serves one keyprovider protocol request (the JSON inside the gRPC bytes field) and
/// returns the answer JSON. KEKs come from `keks` (and, for wrapping, a `keypath` file).
pub async fn handle(input: &[u8], keks: &KekChain) -> Result<Vec<u8>, ProtocolError> {
    let request: Map<String, Value> = serde_json::from_slice(input)
        .map_err(|e| ProtocolError::Malformed(format!("not a JSON object ({e})")))?;
    let op = request
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let answer = match op {
        "keywrap" => {
            let params = request
                .get("keywrapparams")
                .ok_or_else(|| ProtocolError::Malformed("no keywrapparams".into()))?;
            let ec = params.get("ec").unwrap_or(&Value::Null);
            let (kid, keypath, param_encoding) = wrap_parameters(ec)?;
            let (optsdata, encoding) = match params.get("optsdata") {
                Some(v) => bytes_of(v, "optsdata")?,
                None => return Err(ProtocolError::Malformed("no optsdata".into())),
            };
            let optsdata = Zeroizing::new(optsdata);
            let kek = match keypath {
                Some(path) => read_kek_file(&path)?,
                None => keks.get(&kid.uri).await?,
            };
            let packet = AnnotationPacket::wrap(&kid.uri, &kek, &optsdata)?;
            let encoding = if encoding == param_encoding {
                encoding
            } else {
                Encoding::Base64
            };
            json!({"keywrapresults": {"annotation": bytes_value(&packet.to_json(), encoding)}})
        }
        "keyunwrap" => {
            let annotation = request
                .get("keyunwrapparams")
                .and_then(|p| p.get("annotation"))
                .ok_or_else(|| ProtocolError::Malformed("no keyunwrapparams.annotation".into()))?;
            let (packet_json, encoding) = bytes_of(annotation, "annotation")?;
            let packet = AnnotationPacket::from_json(&packet_json)?;
            let kek = keks.get(&packet.kid).await?;
            let optsdata = packet.unwrap(&kek)?;
            json!({"keyunwrapresults": {"optsdata": bytes_value(&optsdata, encoding)}})
        }
        other => return Err(ProtocolError::UnsupportedOp(other.to_string())),
    };
    Ok(serde_json::to_vec(&answer).expect("an answer serializes"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kek::{FileKekSource, KekSource};

    fn chain(dir: &std::path::Path) -> KekChain {
        let sources: Vec<Arc<dyn KekSource>> = vec![Arc::new(FileKekSource::new(dir))];
        KekChain::new(sources)
    }

    #[tokio::test]
    async fn wrap_then_unwrap_in_both_encodings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("default/image_key")).unwrap();
        std::fs::write(dir.path().join("default/image_key/k"), [4u8; 32]).unwrap();
        let keks = chain(dir.path());
        let opts = br#"{"symkey":"AAAA","digest":"","cipheroptions":{}}"#;

        // Go form: base64 strings everywhere.
        let params = b64_encode(b"keyid=kbs:///default/image_key/k::algorithm=A256GCM");
        let wrap = json!({
            "op": "keywrap",
            "keywrapparams": {"ec": {"Parameters": {"attestation-agent": [params]}, "DecryptConfig": {"Parameters": {}}}, "optsdata": b64_encode(opts)},
            "keyunwrapparams": {"dc": null, "annotation": null},
        });
        let out: Value = serde_json::from_slice(
            &handle(&serde_json::to_vec(&wrap).unwrap(), &keks)
                .await
                .unwrap(),
        )
        .unwrap();
        let annotation = out["keywrapresults"]["annotation"]
            .as_str()
            .unwrap()
            .to_string();
        let packet = AnnotationPacket::from_json(&b64_decode(&annotation).unwrap()).unwrap();
        assert_eq!(packet.kid, "kbs:///default/image_key/k");

        let unwrap = json!({
            "op": "keyunwrap",
            "keywrapparams": {"ec": null, "optsdata": null},
            "keyunwrapparams": {"dc": {"Parameters": {"attestation-agent": [b64_encode(b"cc_kbc::null")]}}, "annotation": annotation},
        });
        let out: Value = serde_json::from_slice(
            &handle(&serde_json::to_vec(&unwrap).unwrap(), &keks)
                .await
                .unwrap(),
        )
        .unwrap();
        let optsdata = out["keyunwrapresults"]["optsdata"].as_str().unwrap();
        assert_eq!(b64_decode(optsdata).unwrap(), opts);

        // Rust form: arrays of integers, answered in kind.
        let packet_bytes: Vec<Value> = packet.to_json().iter().map(|b| json!(b)).collect();
        let unwrap = json!({"op": "keyunwrap", "keyunwrapparams": {"annotation": packet_bytes}});
        let out: Value = serde_json::from_slice(
            &handle(&serde_json::to_vec(&unwrap).unwrap(), &keks)
                .await
                .unwrap(),
        )
        .unwrap();
        let optsdata: Vec<u8> = out["keyunwrapresults"]["optsdata"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(optsdata, opts);
    }

    #[tokio::test]
    async fn bad_requests_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let keks = chain(dir.path());
        for (request, needle) in [
            (json!({"op": "keysign"}), "unsupported keyprovider op"),
            (
                json!({"op": "keywrap", "keywrapparams": {"ec": {"Parameters": {}}, "optsdata": ""}}),
                "no \"attestation-agent\" entry",
            ),
            (
                json!({"op": "keywrap", "keywrapparams": {"ec": {"Parameters": {"attestation-agent": [b64_encode(b"keypath=/x")]}}, "optsdata": ""}}),
                "no keyid",
            ),
            (
                json!({"op": "keywrap", "keywrapparams": {"ec": {"Parameters": {"attestation-agent": [b64_encode(b"sample=true")]}}, "optsdata": ""}}),
                "sample=true",
            ),
            (
                json!({"op": "keyunwrap", "keyunwrapparams": {"annotation": b64_encode(br#"{"kid":"kbs:///a/b/c","wrapped_data":"AAAAAAAAAAAAAAAAAAAAAA==","iv":"AAAAAAAAAAAAAAAA","wrap_type":"A256GCM"}"#)}}),
                "no KEK for kid kbs:///a/b/c",
            ),
            (
                json!({"op": "keyunwrap", "keyunwrapparams": {"annotation": [300]}}),
                "not an array of bytes",
            ),
        ] {
            let err = handle(&serde_json::to_vec(&request).unwrap(), &keks)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }
}
