//! Veil's gRPC servers on unix sockets answer clients of other languages dialled with the
//! socket path, whatever HTTP/2 `:authority` they send (the path itself, or a
//! percent-encoded form of it, which h2 alone refuses with `RST_STREAM PROTOCOL_ERROR`):
//!
//! - python grpcio (`tests/python/grpccall.py`), channel target `unix:SOCKET` with
//!   grpcio's own `:authority` (recent releases send the socket path), and with the
//!   `:authority` forced to the path and to its percent-encoded form;
//! - grpc-go (`tests/go/src/veil.test/grpccall`, Debian's grpc-go built offline in GOPATH
//!   mode), dial target the bare socket path, so grpc-go sends it as `:authority`.
//!
//! Each client prepares, lists, stats and removes a snapshot through veil-snapshotter's
//! snapshots API (and gets `NOT_FOUND` for a missing key), and has `veil keyprovider
//! serve` wrap a key (an attestation-agent annotation packet comes back) and refuse a
//! request that is not JSON with `INVALID_ARGUMENT` naming the fault. (The status socket
//! speaks plain JSON, not HTTP/2: it has no `:authority` to refuse.)
//!
//! Needs root (the snapshotter mounts), `python3` with grpcio (scripts/setup installs it
//! with pip), `golang-go` and `golang-google-grpc-dev`. Run with
//! `cargo test -p veil-tests --test grpc_clients`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use containerd_snapshots::api::snapshots::v1::{
    Info, Kind, ListSnapshotsRequest, ListSnapshotsResponse, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse,
};
use prost::Message;
use serde_json::{json, Value};
use veil_keyprovider::aa_packet::AnnotationPacket;
use veil_tests::gosuite::{build_go_tool, go_tool_path};
use veil_tests::process::run_with_timeout;
use veil_tests::{require_root, unmount_below, veil_binary, ChildGuard};

const SNAPSHOTS: &str = "/containerd.services.snapshots.v1.Snapshots/";
const KEYPROVIDER: &str = "/keyprovider.KeyProviderService/";
/// gRPC status codes the tests expect.
const OK: u32 = 0;
const INVALID_ARGUMENT: u32 = 3;
const NOT_FOUND: u32 = 5;
/// Upper bound for one client call (a process start and one RPC).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A gRPC client program and how it is dialled.
#[derive(Debug, Clone)]
enum Client {
    /// grpcio, target `unix:SOCKET`, with this `:authority` forced (or grpcio's own).
    Python { authority: Option<String> },
    /// grpc-go, dial target the bare socket path.
    Go { binary: PathBuf },
}

/// What one call gave.
#[derive(Debug)]
struct Reply {
    code: u32,
    message: String,
    replies: Vec<Vec<u8>>,
}

impl Client {
    /// The clients to try against `socket`: grpcio as it comes, grpcio with the path and
    /// its percent-encoded form as `:authority`, and grpc-go.
    fn all(socket: &Path, go: &Path) -> Vec<Client> {
        let path = socket.display().to_string();
        vec![
            Client::Python { authority: None },
            Client::Python {
                authority: Some(path.clone()),
            },
            Client::Python {
                authority: Some(path.replace('/', "%2F")),
            },
            Client::Go {
                binary: go.to_path_buf(),
            },
        ]
    }

    fn name(&self) -> String {
        match self {
            Client::Python { authority: None } => "python grpcio".into(),
            Client::Python { authority: Some(a) } => format!("python grpcio (:authority {a})"),
            Client::Go { .. } => "grpc-go".into(),
        }
    }

    fn call(&self, socket: &Path, method: &str, request: &[u8], stream: bool, dir: &Path) -> Reply {
        let mut cmd = match self {
            Client::Python { authority } => {
                let mut cmd = Command::new("python3");
                cmd.arg(veil_tests::binaries::workspace_root().join("tests/python/grpccall.py"));
                if let Some(a) = authority {
                    cmd.arg("--authority").arg(a);
                }
                cmd
            }
            Client::Go { binary } => Command::new(binary),
        };
        if stream {
            cmd.arg("--stream");
        }
        cmd.arg(socket).arg(method).arg(hex::encode(request));
        let what = format!("{} calling {method}", self.name());
        let out = run_with_timeout(cmd, CALL_TIMEOUT, &dir.join("call"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"));
        Reply {
            code: v["code"].as_u64().unwrap_or(u64::MAX) as u32,
            message: v["message"].as_str().unwrap_or_default().to_string(),
            replies: v["replies"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|h| hex::decode(h.as_str().unwrap_or("?")).unwrap())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// A call that must succeed; its replies.
    fn ok(
        &self,
        socket: &Path,
        method: &str,
        request: &[u8],
        stream: bool,
        dir: &Path,
    ) -> Vec<Vec<u8>> {
        let reply = self.call(socket, method, request, stream, dir);
        assert_eq!(
            reply.code,
            OK,
            "{} calling {method}: gRPC status {} {:?}",
            self.name(),
            reply.code,
            reply.message
        );
        reply.replies
    }
}

/// The grpc-go client, built offline from Debian's grpc-go sources.
fn go_client() -> PathBuf {
    build_go_tool("veil.test/grpccall", &go_tool_path("grpccall"))
        .expect("building the grpc-go client (golang-go, golang-google-grpc-dev)")
}

/// The scratch directory; everything mounted below it is unmounted when it is dropped.
struct Scratch(tempfile::TempDir);

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_below(self.0.path());
    }
}

#[test]
fn python_and_go_clients_use_the_snapshots_api_by_socket_path() {
    require_root();
    let go = go_client();
    let scratch = Scratch(
        tempfile::Builder::new()
            .prefix("veil-grpc-")
            .tempdir()
            .unwrap(),
    );
    let dir = scratch.0.path();
    let root = dir.join("root");
    let socket = dir.join("veil.sock");
    std::fs::create_dir_all(&root).unwrap();
    let mut cmd = Command::new(veil_binary("veil-snapshotter"));
    cmd.arg("--root").arg(&root).arg("--address").arg(&socket);
    let mut snapshotter =
        ChildGuard::spawn("veil-snapshotter", cmd, &dir.join("snapshotter.log")).unwrap();
    snapshotter
        .wait_for_path(&socket, Duration::from_secs(30))
        .unwrap();

    for (i, client) in Client::all(&socket, &go).into_iter().enumerate() {
        let name = client.name();
        let key = format!("grpc-clients-{i}");
        let call = |method: &str, request: Vec<u8>| {
            client.ok(
                &socket,
                &format!("{SNAPSHOTS}{method}"),
                &request,
                false,
                dir,
            )
        };
        call(
            "Prepare",
            PrepareSnapshotRequest {
                snapshotter: "veil".into(),
                key: key.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        );

        let listed: Vec<Info> = client
            .ok(
                &socket,
                &format!("{SNAPSHOTS}List"),
                &ListSnapshotsRequest {
                    snapshotter: "veil".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                true,
                dir,
            )
            .iter()
            .flat_map(|m| ListSnapshotsResponse::decode(m.as_slice()).unwrap().info)
            .collect();
        let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, [key.as_str()], "{name}: List");

        let stat = call(
            "Stat",
            StatSnapshotRequest {
                snapshotter: "veil".into(),
                key: key.clone(),
            }
            .encode_to_vec(),
        );
        let info = StatSnapshotResponse::decode(stat[0].as_slice())
            .unwrap()
            .info
            .unwrap();
        assert_eq!(
            (info.name.as_str(), info.kind),
            (key.as_str(), Kind::Active as i32),
            "{name}: Stat"
        );

        let missing = client.call(
            &socket,
            &format!("{SNAPSHOTS}Stat"),
            &StatSnapshotRequest {
                snapshotter: "veil".into(),
                key: "no-such-snapshot".into(),
            }
            .encode_to_vec(),
            false,
            dir,
        );
        assert_eq!(
            missing.code, NOT_FOUND,
            "{name}: Stat of a missing key: {missing:?}"
        );

        call(
            "Remove",
            RemoveSnapshotRequest {
                snapshotter: "veil".into(),
                key,
            }
            .encode_to_vec(),
        );
    }
    snapshotter.check_running().unwrap();
}

/// The keyprovider's request message: field 1, the protocol JSON.
fn keyprovider_input(request: &Value) -> Vec<u8> {
    veil_proto::keyprovider::KeyProviderKeyWrapProtocolInput {
        key_provider_key_wrap_protocol_input: serde_json::to_vec(request).unwrap(),
    }
    .encode_to_vec()
}

#[test]
fn python_and_go_clients_use_keyprovider_serve_by_socket_path() {
    let go = go_client();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let kek_file = dir.join("kek.bin");
    std::fs::write(&kek_file, [0x4b; 32]).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[decryption]\nkeys_dir = \"{}\"\nkek_sources = [\"file\"]\n",
            dir.join("no-keys").display()
        ),
    )
    .unwrap();
    let socket = dir.join("kp.sock");
    let mut cmd = Command::new(veil_binary("veil"));
    cmd.args(["keyprovider", "serve", "--address"])
        .arg(&socket)
        .arg("--config")
        .arg(&config);
    let mut server =
        ChildGuard::spawn("veil keyprovider serve", cmd, &dir.join("keyprovider.log")).unwrap();
    server
        .wait_for_path(&socket, Duration::from_secs(30))
        .unwrap();

    let kid = "kbs:///default/image_key/grpc-clients";
    let params = format!("keyid={kid}::keypath={}", kek_file.display());
    let wrap = json!({
        "op": "keywrap",
        "keywrapparams": {
            "ec": {"Parameters": {"attestation-agent": [STANDARD.encode(params)]}, "DecryptConfig": {"Parameters": {}}},
            "optsdata": STANDARD.encode(br#"{"symkey":"a2V5"}"#),
        },
        "keyunwrapparams": {"dc": null, "annotation": null},
    });
    for client in Client::all(&socket, &go) {
        let name = client.name();
        let wrapped = client.ok(
            &socket,
            &format!("{KEYPROVIDER}WrapKey"),
            &keyprovider_input(&wrap),
            false,
            dir,
        );
        let output = veil_proto::keyprovider::KeyProviderKeyWrapProtocolOutput::decode(
            wrapped[0].as_slice(),
        )
        .unwrap()
        .key_provider_key_wrap_protocol_output;
        let output: Value = serde_json::from_slice(&output).unwrap();
        let annotation = output["keywrapresults"]["annotation"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: WrapKey gave no annotation: {output}"));
        let packet = AnnotationPacket::from_json(&STANDARD.decode(annotation).unwrap()).unwrap();
        assert_eq!(packet.kid, kid, "{name}: WrapKey");

        let refused = client.call(
            &socket,
            &format!("{KEYPROVIDER}UnWrapKey"),
            &veil_proto::keyprovider::KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: b"not json".to_vec(),
            }
            .encode_to_vec(),
            false,
            dir,
        );
        assert_eq!(refused.code, INVALID_ARGUMENT, "{name}: {refused:?}");
        assert!(
            refused.message.contains("UnWrapKey")
                && refused.message.contains("malformed keyprovider request"),
            "{name}: {refused:?}"
        );
    }
    server.check_running().unwrap();
}
