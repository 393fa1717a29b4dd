//! The CDH front door (`veil-cdh`) on real unix sockets, against the test tree's stand-ins
//! built on containerd's Rust ttrpc (kata-agent, CDH and the attestation agent cannot run
//! here): kata-agent's `PullImage` reaches Veil's handler and is answered on its stream,
//! concurrently, with CDH-shaped errors; every other call (a service Veil has never heard
//! of, `GetResource`, a duplex stream) reaches the CDH stand-in byte for byte and its
//! answers come back unchanged; an unreachable CDH is named in an `UNAVAILABLE` answer
//! and reconnected to later; a broken client loses only its own connection; the
//! `GetResource` KEK source and the attestation-agent measurement client work against
//! the stand-ins.
//!
//! Run with `cargo test -p veil-tests --test cdh_front`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use ttrpc::proto::Codec;
use veil_cdh::front::{
    FrontDoor, FrontDoorConfig, FrontError, PullFailure, PullHandler, RunningFrontDoor,
};
use veil_cdh::kek::CdhTtrpcKekSource;
use veil_cdh::measure::{record_image_pull, MeasurementOutcome};
use veil_keyprovider::kek::{KekSource, Kid};
use veil_tests::cdh_standin::{
    pull_image, AaStandIn, CallFailure, CdhStandIn, TtrpcClient, CDH_GET_RESOURCE_ERROR,
    ECHO_METHOD, ECHO_SERVICE, ECHO_STREAM_METHOD, GET_RESOURCE_SERVICE,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const INTERNAL: i32 = 13;
const DEADLINE_EXCEEDED: i32 = 4;
const UNAVAILABLE: i32 = 14;

type PullFn =
    dyn Fn(String, PathBuf) -> BoxFuture<'static, Result<String, PullFailure>> + Send + Sync;

/// A pull handler that records its calls and runs `behaviour`.
struct TestPuller {
    seen: Mutex<Vec<(String, PathBuf)>>,
    behaviour: Box<PullFn>,
}

impl TestPuller {
    fn new(
        behaviour: impl Fn(String, PathBuf) -> BoxFuture<'static, Result<String, PullFailure>>
            + Send
            + Sync
            + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::new()),
            behaviour: Box::new(behaviour),
        })
    }

    fn seen(&self) -> Vec<(String, PathBuf)> {
        self.seen.lock().unwrap().clone()
    }
}

impl PullHandler for TestPuller {
    fn pull_image(
        &self,
        image_url: String,
        bundle_path: PathBuf,
    ) -> BoxFuture<'_, Result<String, PullFailure>> {
        self.seen
            .lock()
            .unwrap()
            .push((image_url.clone(), bundle_path.clone()));
        (self.behaviour)(image_url, bundle_path)
    }
}

struct Sockets {
    _dir: tempfile::TempDir,
    front: PathBuf,
    cdh: PathBuf,
    aa: PathBuf,
}

fn sockets() -> Sockets {
    let dir = tempfile::Builder::new()
        .prefix("veil-cdh")
        .tempdir()
        .unwrap();
    Sockets {
        front: dir.path().join("run/confidential-containers/cdh.sock"),
        cdh: dir.path().join("cdh-upstream.sock"),
        aa: dir.path().join("aa.sock"),
        _dir: dir,
    }
}

async fn front_door(s: &Sockets, handler: Arc<dyn PullHandler>) -> RunningFrontDoor {
    FrontDoor::bind(FrontDoorConfig::new(&s.front, &s.cdh), handler)
        .await
        .unwrap()
        .spawn()
}

fn digest_of(url: &str) -> String {
    format!("sha256:{:0>64}", url.len())
}

/// A ttrpc request frame built with the ttrpc crate's own message type.
fn request_frame(
    stream_id: u32,
    service: &str,
    method: &str,
    payload: &[u8],
    timeout_nano: i64,
) -> Vec<u8> {
    let mut request = ttrpc::Request::new();
    request.service = service.into();
    request.method = method.into();
    request.payload = payload.to_vec();
    request.timeout_nano = timeout_nano;
    let body = request.encode().unwrap();
    let mut frame = Vec::new();
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&body);
    frame
}

/// Reads one whole frame (header and payload), or `None` at end of stream.
async fn read_raw_frame(stream: &mut UnixStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 10];
    if stream.read_exact(&mut header).await.is_err() {
        return None;
    }
    let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
    let mut frame = header.to_vec();
    frame.resize(10 + len, 0);
    stream.read_exact(&mut frame[10..]).await.ok()?;
    Some(frame)
}

fn response_status(frame: &[u8]) -> (i32, String) {
    let response = ttrpc::Response::decode(&frame[10..]).unwrap();
    let status = response.status.clone().unwrap_or_default();
    (status.code() as i32, status.message.clone())
}

#[tokio::test]
async fn pull_image_reaches_the_handler_and_the_digest_comes_back() {
    let s = sockets();
    let puller = TestPuller::new(|url, _| Box::pin(async move { Ok(digest_of(&url)) }));
    let front = front_door(&s, puller.clone()).await;
    let mode = std::fs::metadata(&s.front).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode");

    let url = "registry.example:5000/team/app@sha256:0123";
    let bundle = Path::new("/run/kata-containers/4f2c/");
    let digest = pull_image(&s.front, url, bundle, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(digest, digest_of(url));
    assert_eq!(puller.seen(), vec![(url.to_string(), bundle.to_path_buf())]);

    // A request without a bundle path is refused before the handler.
    let err = pull_image(&s.front, url, Path::new(""), CALL_TIMEOUT)
        .await
        .unwrap_err();
    let CallFailure::Status { code, message } = err else {
        panic!("{err:?}")
    };
    assert_eq!(code, 3, "{message}");
    assert!(message.contains("bundle_path"), "{message}");
    assert_eq!(puller.seen().len(), 1);

    front.shutdown().await;
    assert!(!s.front.exists(), "the socket is removed at shutdown");
}

#[tokio::test]
async fn concurrent_pulls_on_one_connection_are_both_answered() {
    let s = sockets();
    // Each pull waits for the other to start: serialized pulls would never finish.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let puller = TestPuller::new(move |url, _| {
        let barrier = barrier.clone();
        Box::pin(async move {
            barrier.wait().await;
            Ok(digest_of(&url))
        })
    });
    let front = front_door(&s, puller.clone()).await;
    let client = TtrpcClient::connect(&s.front).await.unwrap();
    let (a, b) = tokio::join!(
        client.pull_image("example.com/a:1", Path::new("/b/1"), CALL_TIMEOUT),
        client.pull_image("example.com/longer-name:2", Path::new("/b/2"), CALL_TIMEOUT),
    );
    assert_eq!(a.unwrap(), digest_of("example.com/a:1"));
    assert_eq!(b.unwrap(), digest_of("example.com/longer-name:2"));
    assert_eq!(puller.seen().len(), 2);
    front.shutdown().await;
}

#[tokio::test]
async fn failed_and_overdue_pulls_get_cdh_shaped_errors() {
    let s = sockets();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let puller = TestPuller::new(move |url, _| {
        let flag = flag.clone();
        Box::pin(async move {
            assert!(!url.contains("panic"), "a handler bug");
            if url.contains("slow") {
                struct SetOnDrop(Arc<AtomicBool>);
                impl Drop for SetOnDrop {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let _guard = SetOnDrop(flag);
                futures::future::pending::<()>().await;
            }
            Err(PullFailure::new(
                "manifest unknown: registry.example answered 404",
            ))
        })
    });
    let front = front_door(&s, puller).await;

    let err = pull_image(
        &s.front,
        "registry.example/missing:1",
        Path::new("/b"),
        CALL_TIMEOUT,
    )
    .await
    .unwrap_err();
    let CallFailure::Status { code, message } = err else {
        panic!("{err:?}")
    };
    assert_eq!(code, INTERNAL);
    assert!(
        message.starts_with("[CDH] [ERROR]: Image Pull error: "),
        "{message}"
    );
    assert!(message.contains("registry.example/missing:1"), "{message}");
    assert!(
        message.contains("manifest unknown: registry.example answered 404"),
        "{message}"
    );

    // A handler that panics: still an answer, not a hang.
    let err = pull_image(
        &s.front,
        "registry.example/panic:1",
        Path::new("/b"),
        CALL_TIMEOUT,
    )
    .await
    .unwrap_err();
    let CallFailure::Status { code, message } = err else {
        panic!("{err:?}")
    };
    assert_eq!(code, INTERNAL);
    assert!(message.contains("panicked"), "{message}");

    // timeout_nano of 300 ms on a pull that never ends: DEADLINE_EXCEEDED, and the pull
    // future is dropped. (Raw frames: the ttrpc client would give up at the same moment.)
    let mut raw = UnixStream::connect(&s.front).await.unwrap();
    let payload = veil_tests::cdh_standin::wire::ImagePullRequest {
        image_url: "registry.example/slow:1".into(),
        bundle_path: "/b".into(),
    };
    let payload = prost::Message::encode_to_vec(&payload);
    raw.write_all(&request_frame(
        5,
        "api.ImagePullService",
        "PullImage",
        &payload,
        300_000_000,
    ))
    .await
    .unwrap();
    let answer = tokio::time::timeout(CALL_TIMEOUT, read_raw_frame(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        u32::from_be_bytes(answer[4..8].try_into().unwrap()),
        5,
        "stream id"
    );
    assert_eq!(answer[8], 2, "a response frame");
    let (code, message) = response_status(&answer);
    assert_eq!(code, DEADLINE_EXCEEDED, "{message}");
    assert!(message.contains("timeout"), "{message}");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the overdue pull was cancelled"
    );
    front.shutdown().await;
}

#[tokio::test]
async fn other_calls_reach_the_cdh_unchanged_and_come_back_unchanged() {
    let s = sockets();
    let key: Vec<u8> = (0u8..32).collect();
    let cdh = CdhStandIn::start(
        &s.cdh,
        HashMap::from([("kbs:///default/key/1".to_string(), key.clone())]),
    )
    .await
    .unwrap();
    let puller = TestPuller::new(|url, _| Box::pin(async move { Ok(digest_of(&url)) }));
    let front = front_door(&s, puller.clone()).await;
    let client = TtrpcClient::connect(&s.front).await.unwrap();

    let payload: Vec<u8> = vec![0, 0xff, 0x0a, 0x80, 0x01, 42, 7, 0];
    let echoed = client
        .call(ECHO_SERVICE, ECHO_METHOD, payload.clone(), CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(echoed, payload);
    assert_eq!(
        client
            .get_resource("kbs:///default/key/1", CALL_TIMEOUT)
            .await
            .unwrap(),
        key
    );
    let err = client
        .get_resource("kbs:///default/key/absent", CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CallFailure::Status {
            code: INTERNAL,
            message: CDH_GET_RESOURCE_ERROR.into()
        }
    );
    // A duplex stream: data frames both ways, the closing flags, the final response.
    let messages = vec![b"one".to_vec(), Vec::new(), vec![9u8; 70_000]];
    assert_eq!(
        client.echo_stream(&messages, CALL_TIMEOUT).await.unwrap(),
        messages
    );
    // A pull on the same connection meanwhile is still Veil's.
    client
        .pull_image("example.com/x:1", Path::new("/b"), CALL_TIMEOUT)
        .await
        .unwrap();

    let calls = cdh.calls();
    let summary: Vec<(&str, &str, bool)> = calls
        .iter()
        .map(|c| (c.service.as_str(), c.method.as_str(), c.stream_data))
        .collect();
    assert_eq!(
        summary,
        [
            (ECHO_SERVICE, ECHO_METHOD, false),
            (GET_RESOURCE_SERVICE, "GetResource", false),
            (GET_RESOURCE_SERVICE, "GetResource", false),
            (ECHO_SERVICE, ECHO_STREAM_METHOD, false),
            (ECHO_SERVICE, ECHO_STREAM_METHOD, true),
            (ECHO_SERVICE, ECHO_STREAM_METHOD, true),
            (ECHO_SERVICE, ECHO_STREAM_METHOD, true),
        ]
    );
    assert_eq!(calls[0].payload, payload);
    assert_eq!(calls[0].timeout_nano, CALL_TIMEOUT.as_nanos() as i64);
    assert_eq!(calls[1].payload[2..], b"kbs:///default/key/1"[..]);
    assert_eq!(calls[4].payload, messages[0]);
    assert_eq!(calls[6].payload, messages[2]);
    assert!(!calls.iter().any(|c| c.service == "api.ImagePullService"));
    assert_eq!(puller.seen().len(), 1);

    // Byte for byte: the same request frame straight to the CDH and through Veil gets the
    // same answer frame.
    let frame = request_frame(7, ECHO_SERVICE, ECHO_METHOD, b"\x00same bytes\xff", 0);
    let mut answers = Vec::new();
    for socket in [&s.cdh, &s.front] {
        let mut raw = UnixStream::connect(socket).await.unwrap();
        raw.write_all(&frame).await.unwrap();
        answers.push(
            tokio::time::timeout(CALL_TIMEOUT, read_raw_frame(&mut raw))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(answers[0], answers[1]);
    let last = cdh.calls().pop().unwrap();
    assert_eq!(last.payload, b"\x00same bytes\xff");

    front.shutdown().await;
    cdh.stop().await;
}

#[tokio::test]
async fn an_unreachable_cdh_is_named_and_reconnected_to() {
    let s = sockets();
    let puller = TestPuller::new(|url, _| Box::pin(async move { Ok(digest_of(&url)) }));
    let front = front_door(&s, puller).await;
    let client = TtrpcClient::connect(&s.front).await.unwrap();

    let unavailable = |err: CallFailure| {
        let CallFailure::Status { code, message } = err else {
            panic!("{err:?}")
        };
        assert_eq!(code, UNAVAILABLE, "{message}");
        assert!(message.contains(&s.cdh.display().to_string()), "{message}");
        assert!(message.contains("veiltest.EchoService/Echo"), "{message}");
    };
    // No CDH yet.
    unavailable(
        client
            .call(ECHO_SERVICE, ECHO_METHOD, b"a".to_vec(), CALL_TIMEOUT)
            .await
            .unwrap_err(),
    );
    // PullImage does not need the CDH.
    client
        .pull_image("example.com/x:1", Path::new("/b"), CALL_TIMEOUT)
        .await
        .unwrap();

    // The CDH starts: the next call on the same connection gets through.
    let cdh = CdhStandIn::start(&s.cdh, HashMap::new()).await.unwrap();
    assert_eq!(
        client
            .call(ECHO_SERVICE, ECHO_METHOD, b"b".to_vec(), CALL_TIMEOUT)
            .await
            .unwrap(),
        b"b"
    );

    // The CDH goes away and comes back.
    cdh.stop().await;
    unavailable(
        client
            .call(ECHO_SERVICE, ECHO_METHOD, b"c".to_vec(), CALL_TIMEOUT)
            .await
            .unwrap_err(),
    );
    let cdh = CdhStandIn::start(&s.cdh, HashMap::new()).await.unwrap();
    assert_eq!(
        client
            .call(ECHO_SERVICE, ECHO_METHOD, b"d".to_vec(), CALL_TIMEOUT)
            .await
            .unwrap(),
        b"d"
    );
    assert_eq!(cdh.calls().len(), 1);

    front.shutdown().await;
    cdh.stop().await;
}

#[tokio::test]
async fn a_cdh_that_dies_mid_call_still_gets_the_caller_an_answer() {
    let s = sockets();
    // An upstream that takes the request and hangs up without answering.
    let listener = tokio::net::UnixListener::bind(&s.cdh).unwrap();
    let upstream = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let got = read_raw_frame(&mut conn).await.unwrap();
        drop(conn);
        got
    });
    let puller = TestPuller::new(|url, _| Box::pin(async move { Ok(digest_of(&url)) }));
    let front = front_door(&s, puller).await;
    let client = TtrpcClient::connect(&s.front).await.unwrap();
    let started = std::time::Instant::now();
    let err = client
        .call(ECHO_SERVICE, ECHO_METHOD, b"lost".to_vec(), CALL_TIMEOUT)
        .await
        .unwrap_err();
    let CallFailure::Status { code, message } = err else {
        panic!("{err:?}")
    };
    assert_eq!(code, UNAVAILABLE, "{message}");
    assert!(message.contains(&s.cdh.display().to_string()), "{message}");
    assert!(message.contains("before answering"), "{message}");
    assert!(
        started.elapsed() < CALL_TIMEOUT / 2,
        "answered at once, not at the timeout"
    );
    let forwarded = upstream.await.unwrap();
    let request = ttrpc::Request::decode(&forwarded[10..]).unwrap();
    assert_eq!(request.payload, b"lost");
    front.shutdown().await;
}

#[tokio::test]
async fn a_broken_client_loses_only_its_own_connection() {
    let s = sockets();
    let cdh = CdhStandIn::start(&s.cdh, HashMap::new()).await.unwrap();
    let puller = TestPuller::new(|url, _| Box::pin(async move { Ok(digest_of(&url)) }));
    let front = front_door(&s, puller).await;
    let good = TtrpcClient::connect(&s.front).await.unwrap();
    assert_eq!(
        good.call(ECHO_SERVICE, ECHO_METHOD, b"1".to_vec(), CALL_TIMEOUT)
            .await
            .unwrap(),
        b"1"
    );

    let mut broken_frames = Vec::new();
    // A header claiming a 5 MiB payload (only the header is sent).
    let mut oversized = Vec::new();
    oversized.extend_from_slice(&(5u32 << 20).to_be_bytes());
    oversized.extend_from_slice(&[0, 0, 0, 1, 1, 0]);
    broken_frames.push(oversized);
    // A request frame whose payload is not a ttrpc.Request.
    let mut garbage = vec![0, 0, 0, 6, 0, 0, 0, 3, 1, 0];
    garbage.extend_from_slice(&[0xff; 6]);
    broken_frames.push(garbage);
    for bytes in broken_frames {
        let mut raw = UnixStream::connect(&s.front).await.unwrap();
        raw.write_all(&bytes).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(CALL_TIMEOUT, raw.read_to_end(&mut rest))
            .await
            .expect("the broken connection is closed");
        assert!(read.is_ok() || rest.is_empty());
        assert!(rest.is_empty(), "no answer on a broken connection");
    }

    // The other connection, and new ones, are served as before.
    assert_eq!(
        good.call(ECHO_SERVICE, ECHO_METHOD, b"2".to_vec(), CALL_TIMEOUT)
            .await
            .unwrap(),
        b"2"
    );
    good.pull_image("example.com/x:1", Path::new("/b"), CALL_TIMEOUT)
        .await
        .unwrap();
    pull_image(&s.front, "example.com/y:1", Path::new("/b"), CALL_TIMEOUT)
        .await
        .unwrap();
    assert!(cdh.calls().iter().all(|c| c.payload != [0xff; 6]));

    front.shutdown().await;
    cdh.stop().await;
}

#[tokio::test]
async fn binding_replaces_a_stale_socket_but_not_a_live_one_and_shutdown_waits_for_pulls() {
    let s = sockets();
    let puller = TestPuller::new(|url, _| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(digest_of(&url))
        })
    });
    // A live server on the path (CDH not moved yet): refused, naming the path.
    std::fs::create_dir_all(s.front.parent().unwrap()).unwrap();
    let squatter = CdhStandIn::start(&s.front, HashMap::new()).await.unwrap();
    let err = FrontDoor::bind(FrontDoorConfig::new(&s.front, &s.cdh), puller.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, FrontError::InUse(_)), "{err}");
    assert!(
        err.to_string().contains(&s.front.display().to_string()),
        "{err}"
    );
    squatter.stop().await;
    // A stale socket file (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&s.front).unwrap());
    assert!(s.front.exists());
    let err = FrontDoor::bind(FrontDoorConfig::new(&s.cdh, &s.cdh), puller.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, FrontError::SameSocket(_)), "{err}");
    let front = front_door(&s, puller.clone()).await;

    // A pull under way when shutdown starts is still answered.
    let socket = s.front.clone();
    let pull = tokio::spawn(async move {
        pull_image(&socket, "example.com/z:1", Path::new("/b"), CALL_TIMEOUT).await
    });
    while puller.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    front.shutdown().await;
    assert_eq!(pull.await.unwrap().unwrap(), digest_of("example.com/z:1"));
    assert!(!s.front.exists());
}

#[tokio::test]
async fn the_kek_source_gets_keys_from_cdh_get_resource() {
    let s = sockets();
    let kek = vec![0x5au8; 32];
    let cdh = CdhStandIn::start(
        &s.cdh,
        HashMap::from([("kbs:///default/image_key/app".to_string(), kek.clone())]),
    )
    .await
    .unwrap();
    let source = CdhTtrpcKekSource::new(&s.cdh, CALL_TIMEOUT);
    assert_eq!(source.name(), format!("cdh-ttrpc:{}", s.cdh.display()));
    let kid = Kid::parse("kbs:///default/image_key/app").unwrap();
    let got = source.get(&kid).await.unwrap();
    assert_eq!(got.expose(), &kek[..]);
    assert!(
        !format!("{got:?}").contains("90"),
        "Debug shows no key bytes"
    );
    let calls = cdh.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "GetResource");
    assert_eq!(calls[0].payload[2..], b"kbs:///default/image_key/app"[..]);

    let missing = Kid::parse("kbs:///default/image_key/other").unwrap();
    let err = source.get(&missing).await.unwrap_err().to_string();
    assert!(err.contains("kbs:///default/image_key/other"), "{err}");
    assert!(err.contains(CDH_GET_RESOURCE_ERROR), "{err}");
    assert!(err.contains("INTERNAL"), "{err}");

    cdh.stop().await;
    let err = source.get(&kid).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("Confidential Data Hub at {}", s.cdh.display())),
        "{err}"
    );
}

#[tokio::test]
async fn a_pull_is_recorded_in_the_runtime_measurements() {
    let s = sockets();
    let image = "registry.example/app:1";
    let digest = "sha256:1f2e3d";
    // No attestation agent: skipped.
    assert_eq!(
        record_image_pull(&s.aa, image, digest).await.unwrap(),
        MeasurementOutcome::Skipped
    );

    let aa = AaStandIn::start(&s.aa, 0).await.unwrap();
    assert_eq!(
        record_image_pull(&s.aa, image, digest).await.unwrap(),
        MeasurementOutcome::Recorded
    );
    let seen = aa.measurements();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].domain, "github.com/confidential-containers");
    assert_eq!(seen[0].operation, "PullImage");
    assert_eq!(seen[0].register_index, None);
    assert_eq!(seen[0].timeout_nano, 10_000_000_000);
    assert_eq!(
        seen[0].content,
        format!(r#"{{"image":"{image}", "digest":"{digest}"}}"#)
    );
    let content: serde_json::Value = serde_json::from_str(&seen[0].content).unwrap();
    assert_eq!(
        content,
        serde_json::json!({"image": image, "digest": digest})
    );
    aa.stop().await;

    let aa = AaStandIn::start(&s.aa, 2).await.unwrap();
    assert_eq!(
        record_image_pull(&s.aa, image, digest).await.unwrap(),
        MeasurementOutcome::NotEnabled
    );
    aa.stop().await;
}
