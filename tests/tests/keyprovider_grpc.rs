//! `veil keyprovider serve` (ocicrypt's keyprovider gRPC API, provider
//! `attestation-agent`) on a temporary unix socket, called by a tonic client of the
//! `keyprovider.KeyProviderService` in `veil-proto`:
//!
//! - WrapKey with coco_keyprovider's parameters (`keyid=kbs:///...::keypath=FILE`) gives
//!   an attestation-agent annotation packet for the kid that opens with the KEK file;
//!   UnWrapKey of it gives the private options back, its KEK released by the test KBS
//!   (in process, sample TEE) after one attestation: both in the Go encoding (base64
//!   strings) and in the Rust one (integer arrays), each answered in kind;
//! - bad input gets a gRPC error whose code and message say what was wrong: not JSON,
//!   the op of the other method, no keyid, a kid the KBS has no resource for;
//! - SIGTERM stops the server and removes its socket.
//!
//! Run with `cargo test -p veil-tests --test keyprovider_grpc`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint, Uri};
use veil_keyprovider::aa_packet::AnnotationPacket;
use veil_keyprovider::secret::SecretBytes;
use veil_proto::keyprovider::key_provider_service_client::KeyProviderServiceClient;
use veil_proto::keyprovider::KeyProviderKeyWrapProtocolInput;
use veil_tests::lazy_image::random_bytes;
use veil_tests::log_secrets::{check_no_secret_in_logs, text_forms};
use veil_tests::test_kbs::{count, resource_reads, InProcessKbs, SAMPLE_ATTESTATIONS};
use veil_tests::ChildGuard;

const KID: &str = "kbs:///default/image_key/test";
const RESOURCE: &str = "default/image_key/test";
/// Private options as ocicrypt writes them (a layer key, its nonce, the digest).
const OPTS: &[u8] = br#"{"symkey":"c2VjcmV0IGxheWVyIGtleSBvZiAzMiBieXRlcyE=","digest":"sha256:0000","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}"#;

/// `veil keyprovider serve` on `dir/kp.sock`, with the `kbs` KEK source at `kbs`.
struct Server {
    guard: ChildGuard,
    socket: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, kbs: &InProcessKbs) -> Server {
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[decryption]\nkeys_dir = \"{}\"\nkek_sources = [\"kbs\"]\nkbs_url = \"{}\"\n\
                 kbs_allow_plain_http = true\nattester = \"sample\"\n",
                dir.join("no-keys").display(),
                kbs.url()
            ),
        )
        .unwrap();
        let socket = dir.join("kp.sock");
        let log = dir.join("keyprovider.log");
        let mut cmd = Command::new(veil_tests::veil_binary("veil"));
        cmd.args(["keyprovider", "serve", "--address"])
            .arg(&socket)
            .arg("--config")
            .arg(&config);
        let mut guard = ChildGuard::spawn("veil keyprovider serve", cmd, &log).unwrap();
        guard
            .wait_for_path(&socket, Duration::from_secs(30))
            .unwrap();
        Server { guard, socket, log }
    }
}

async fn connect(socket: &Path) -> KeyProviderServiceClient<Channel> {
    let socket = socket.to_path_buf();
    // The URI is not used: every connection goes to the socket.
    let channel = Endpoint::try_from("http://keyprovider.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            tokio::net::UnixStream::connect(socket.clone())
        }))
        .await
        .unwrap();
    KeyProviderServiceClient::new(channel)
}

fn input(request: &Value) -> KeyProviderKeyWrapProtocolInput {
    KeyProviderKeyWrapProtocolInput {
        key_provider_key_wrap_protocol_input: serde_json::to_vec(request).unwrap(),
    }
}

fn output(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn array(bytes: &[u8]) -> Value {
    Value::Array(bytes.iter().map(|b| json!(b)).collect())
}

fn from_array(value: &Value) -> Vec<u8> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array of bytes: {value}"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect()
}

/// The wrap request as ocicrypt (Go) sends it: every byte string base64.
fn go_wrap(params: &str, opts: &[u8]) -> Value {
    json!({
        "op": "keywrap",
        "keywrapparams": {
            "ec": {"Parameters": {"attestation-agent": [STANDARD.encode(params)]}, "DecryptConfig": {"Parameters": {}}},
            "optsdata": STANDARD.encode(opts),
        },
        "keyunwrapparams": {"dc": null, "annotation": null},
    })
}

/// The unwrap request as ocicrypt (Go) sends it.
fn go_unwrap(annotation: &str) -> Value {
    json!({
        "op": "keyunwrap",
        "keywrapparams": {"ec": null, "optsdata": null},
        "keyunwrapparams": {
            "dc": {"Parameters": {"attestation-agent": [STANDARD.encode("cc_kbc::null")]}},
            "annotation": annotation,
        },
    })
}

/// A tonic client on a runtime of its own (the test KBS has another).
struct Client {
    runtime: tokio::runtime::Runtime,
    inner: KeyProviderServiceClient<Channel>,
}

impl Client {
    fn connect(socket: &Path) -> Client {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let inner = runtime.block_on(connect(socket));
        Client { runtime, inner }
    }

    fn wrap(
        &mut self,
        input: KeyProviderKeyWrapProtocolInput,
    ) -> Result<Vec<u8>, Box<tonic::Status>> {
        let call = self.inner.wrap_key(tonic::Request::new(input));
        let out = self.runtime.block_on(call).map_err(Box::new)?;
        Ok(out.into_inner().key_provider_key_wrap_protocol_output)
    }

    fn unwrap(
        &mut self,
        input: KeyProviderKeyWrapProtocolInput,
    ) -> Result<Vec<u8>, Box<tonic::Status>> {
        let call = self.inner.un_wrap_key(tonic::Request::new(input));
        let out = self.runtime.block_on(call).map_err(Box::new)?;
        Ok(out.into_inner().key_provider_key_wrap_protocol_output)
    }
}

#[test]
fn wrap_and_unwrap_over_grpc_in_both_encodings() {
    let dir = tempfile::tempdir().unwrap();
    let kek = random_bytes(32, 0x6b70_6772);
    let kek_file = dir.path().join("kek.bin");
    std::fs::write(&kek_file, &kek).unwrap();
    let kbs = InProcessKbs::start(&dir.path().join("kbs")).unwrap();
    kbs.put(RESOURCE, &kek).unwrap();
    let mut server = Server::start(dir.path(), &kbs);
    let mut client = Client::connect(&server.socket);
    let params = format!("keyid={KID}::keypath={}", kek_file.display());

    // Go: base64 strings.
    let wrapped = client
        .wrap(input(&go_wrap(&params, OPTS)))
        .unwrap_or_else(|s| panic!("WrapKey: {s:?}\n{}", server.guard.output()));
    let annotation = output(&wrapped)["keywrapresults"]["annotation"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "no base64 annotation: {}",
                String::from_utf8_lossy(&wrapped)
            )
        })
        .to_string();
    let packet = AnnotationPacket::from_json(&STANDARD.decode(&annotation).unwrap()).unwrap();
    assert_eq!(packet.kid, KID);
    let secret = SecretBytes::new(kek.clone());
    assert_eq!(packet.unwrap(&secret).unwrap().as_slice(), OPTS);
    let unwrapped = client
        .unwrap(input(&go_unwrap(&annotation)))
        .unwrap_or_else(|s| panic!("UnWrapKey: {s:?}\n{}", server.guard.output()));
    let optsdata = output(&unwrapped)["keyunwrapresults"]["optsdata"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(STANDARD.decode(optsdata).unwrap(), OPTS);

    // Rust (ocicrypt-rs, coco_keyprovider): arrays of integers, answered in kind.
    let wrap = json!({
        "op": "keywrap",
        "keywrapparams": {
            "ec": {"Parameters": {"attestation-agent": [array(params.as_bytes())]}, "DecryptConfig": {"Parameters": {}}},
            "optsdata": array(OPTS),
        },
        "keyunwrapparams": {"dc": null, "annotation": null},
    });
    let wrapped = client.wrap(input(&wrap)).unwrap();
    let annotation = from_array(&output(&wrapped)["keywrapresults"]["annotation"]);
    assert_eq!(AnnotationPacket::from_json(&annotation).unwrap().kid, KID);
    let unwrap = json!({
        "op": "keyunwrap",
        "keywrapparams": {"ec": null, "optsdata": null},
        "keyunwrapparams": {"dc": null, "annotation": array(&annotation)},
    });
    let unwrapped = client.unwrap(input(&unwrap)).unwrap();
    assert_eq!(
        from_array(&output(&unwrapped)["keyunwrapresults"]["optsdata"]),
        OPTS
    );

    // Two unwraps, one attestation and one resource read: the KEK is cached.
    let metrics = kbs.metrics().unwrap();
    assert_eq!(count(&metrics, SAMPLE_ATTESTATIONS), 1, "{metrics:?}");
    assert_eq!(count(&metrics, &resource_reads(RESOURCE)), 1, "{metrics:?}");

    // Bad input: the gRPC code and message say what was wrong.
    let not_json = KeyProviderKeyWrapProtocolInput {
        key_provider_key_wrap_protocol_input: b"keywrap please".to_vec(),
    };
    let status = client.wrap(not_json).unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(
            "WrapKey (attestation-agent provider): malformed keyprovider request: not a JSON object"
        ),
        "{status:?}"
    );

    let status = client.wrap(input(&go_unwrap("e30="))).unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("WrapKey: the request's op is \"keyunwrap\"; WrapKey serves op \"keywrap\""),
        "{status:?}"
    );

    let no_keyid = format!("keypath={}", kek_file.display());
    let status = client.wrap(input(&go_wrap(&no_keyid, OPTS))).unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("no keyid"), "{status:?}");

    // A packet for a kid the KBS has no resource for.
    let missing = "kbs:///default/image_key/missing";
    let packet = AnnotationPacket::wrap(missing, &secret, OPTS).unwrap();
    let status = client
        .unwrap(input(&go_unwrap(&STANDARD.encode(packet.to_json()))))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    for needle in [
        "UnWrapKey (attestation-agent provider)",
        &format!("no KEK for kid {missing}"),
        "HTTP 401, KBS error PluginInternalError",
    ] {
        assert!(status.message().contains(needle), "{needle:?}: {status:?}");
    }

    // SIGTERM: a clean exit, the socket removed, no KEK in the log.
    drop(client);
    let exit = server.guard.stop().expect("the server was running");
    assert!(exit.success(), "{exit:?}\n{}", server.guard.output());
    assert!(!server.socket.exists(), "the socket was left behind");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("keyprovider ready"), "{log}");
    check_no_secret_in_logs(std::slice::from_ref(&server.log), &text_forms(&kek)).unwrap();
}
