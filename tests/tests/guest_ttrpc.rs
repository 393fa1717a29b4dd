//! `veil-guest` end to end, as a CoCo guest runs it: the real binary (a process of its
//! own, config file written here) binds a temporary "CDH socket", the CDH stand-in
//! (`veil_tests::cdh_standin`) is the real CDH moved to the upstream socket, the
//! attestation-agent stand-in records runtime measurements, and a kata-agent-like ttrpc
//! client (containerd's Rust `ttrpc`, no code shared with Veil) calls
//! `api.ImagePullService/PullImage` on one connection, as kata-agent does.
//!
//! 1. Three images pulled at once: (a) plain tar.gz, (b) encrypted eStargz for a
//!    `--kbs-kid` kid whose KEK the CDH stand-in releases through `GetResource` (KEK
//!    source `cdh-ttrpc`; the stand-in records the call), (c) encrypted eStargz whose KEK
//!    the test KBS releases after Veil's own attestation (KEK source `kbs`, sample
//!    attester). Each answer is the pushed manifest digest; each bundle runs with
//!    `runc run` and prints files of both layers; the attestation agent recorded one
//!    measurement per pull with the manifest digest. The registry credentials named in
//!    the `cdh.toml` (`kbs:///…`) were fetched through the CDH at start-up.
//! 2. Forwarding: an unknown-service call and a `GetResource` call on Veil's socket reach
//!    the stand-in and come back unchanged.
//! 3. kata-agent's teardown: `umount rootfs` leaves an empty directory and, once the
//!    watcher ran, nothing of Veil's is mounted.
//! 4. Bad input through the socket: unknown image, policy reject (the policy file named by
//!    the cdh.toml's `image_security_policy_uri = "file:///…"`), a key nobody has — each a
//!    clear ttrpc error, nothing mounted, nothing measured.
//! 5. SIGTERM with a container running: clean exit, the socket removed, the container's
//!    root still mounted; a restart adopts it and, once kata-agent unmounts it, releases
//!    its layers: nothing of Veil's left. An attestation agent that hangs up fails the
//!    pull (the measurement is part of it) and the mounted root is taken down again.
//! 6. CDH upstream down: a forwarded call is answered `UNAVAILABLE` naming the upstream
//!    socket; a start-up whose cdh.toml needs the CDH fails with a clear message.
//!
//! A second test: a large image in a small guest. A 64 MiB file — 4 times the 16 MiB
//! plaintext cache budget — in a plain tar.gz and in an eStargz image, each pulled and
//! read whole (`sha256sum` in the container), with veil-guest in a memory cgroup of the
//! budget plus a fixed headroom; its peak RSS must stay under the budget plus the
//! overhead measured ([`RSS_OVERHEAD`]). veil-guest serves `[metrics] address` there:
//! scraped after each pull and after each read, the page counts the image's layers as
//! mounted (`streamed` for the tar.gz, `lazy` for the eStargz one) and, for the eStargz
//! image, its layers' on-demand bytes and the FUSE reads grow by at least the file's size
//! (random data does not compress) while it is read.
//!
//! Needs root, docker-registry, busybox-static, runc, FUSE, overlayfs and a writable
//! memory cgroup. Run with
//! `cargo test -p veil-tests --test guest_ttrpc -- --nocapture`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use veil_formats::estargz::TOC_DIGEST_ANNOTATION;
use veil_tests::bundle::{runc_run_script, unmount_rootfs};
use veil_tests::cdh_standin::{CallFailure, ECHO_METHOD, ECHO_SERVICE, GET_RESOURCE_SERVICE};
use veil_tests::encrypted_support::kbs_kid_encrypt;
use veil_tests::guest_stack::{GuestStack, START_TIMEOUT};
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, sha256_hex, tar_of, top_entries, Layer, LayerFormat,
    BIG_PATH, HELLO_PATH, HELLO_TEXT, LAYER2_PATH, LAYER2_TEXT,
};
use veil_tests::process::run_with_timeout;
use veil_tests::prometheus::{free_loopback_address, scrape, sum};
use veil_tests::test_kbs::{count, resource_reads, SAMPLE_ATTESTATIONS};
use veil_tests::veil_binary;

/// The kid of image (b): its KEK comes from the CDH stand-in.
const KID_CDH: &str = "kbs:///default/image_key/guest-cdh";
/// The kid of image (c): its KEK comes from the test KBS.
const KID_KBS: &str = "kbs:///default/image_key/guest-kbs";
/// (c)'s resource path in the KBS.
const RESOURCE_KBS: &str = "default/image_key/guest-kbs";
/// A kid nobody has.
const KID_NOBODY: &str = "kbs:///default/image_key/nobody";
/// The registry credentials the cdh.toml names, served by the CDH stand-in.
const CREDENTIALS_URI: &str = "kbs:///default/credential/registry";
/// Size of the random file in each image's top layer.
const BIG_SIZE: usize = 1 << 20;
/// How long one `PullImage` may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a forwarded call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The script each container runs, and what it prints.
fn script() -> String {
    format!("cat {HELLO_PATH} {LAYER2_PATH}")
}
fn expected_output() -> String {
    format!("{HELLO_TEXT}{LAYER2_TEXT}")
}

/// A two-layer image (busybox + files, then a big file and one more) in `format`.
fn layers(format: LayerFormat, seed: u64) -> anyhow::Result<Vec<Layer>> {
    sized_layers(format, &random_bytes(BIG_SIZE, seed))
}

/// The two-layer image with `big` as [`BIG_PATH`].
fn sized_layers(format: LayerFormat, big: &[u8]) -> anyhow::Result<Vec<Layer>> {
    Ok(vec![
        pack(tar_of(&base_entries()?)?, format)?,
        pack(tar_of(&top_entries(big.to_vec()))?, format)?,
    ])
}

/// The eStargz image encrypted for `kid` (every layer, sealed TOC digests), as `veil
/// convert --encrypt --kbs-kid` writes it.
fn kid_image(kid: &str, kek: &[u8], seed: u64) -> anyhow::Result<Vec<Layer>> {
    layers(LayerFormat::Estargz, seed)?
        .iter()
        .map(|l| {
            let toc = l
                .annotations
                .get(TOC_DIGEST_ANNOTATION)
                .context("eStargz layer without TOC digest")?;
            kbs_kid_encrypt(l, Some(toc), kid, kek)
        })
        .collect()
}

/// The stack with the CDH stand-in holding (b)'s KEK and the credentials, the KBS (c)'s
/// KEK, a policy refusing `refused`, and a cdh.toml naming both as a peer-pod VM's
/// initdata would; veil-guest configured with `kek_sources = ["cdh-ttrpc", "kbs"]`.
fn stack(kek_cdh: &[u8], kek_kbs: &[u8]) -> anyhow::Result<GuestStack> {
    let resources = HashMap::from([
        (KID_CDH.to_string(), kek_cdh.to_vec()),
        (CREDENTIALS_URI.to_string(), br#"{"auths":{}}"#.to_vec()),
    ]);
    let guest = GuestStack::new("veil-guest-ttrpc-", resources)?;
    guest.kbs.put(RESOURCE_KBS, kek_kbs)?;
    let policy = guest.dir.join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"default":[{{"type":"insecureAcceptAnything"}}],
               "transports":{{"docker":{{"{}/refused":[{{"type":"reject"}}]}}}}}}"#,
            guest.registry.host()
        ),
    )?;
    // CDH's own config, as a peer-pod VM's initdata delivers it.
    let cdh_toml = guest.dir.join("cdh.toml");
    std::fs::write(
        &cdh_toml,
        format!(
            "socket = \"unix://{}\"\n\n[kbc]\nname = \"cc_kbc\"\nurl = \"http://kbs.invalid\"\n\n\
             [image]\nimage_security_policy_uri = \"file://{}\"\n\
             authenticated_registry_credentials_uri = \"{CREDENTIALS_URI}\"\n",
            guest.upstream.display(),
            policy.display()
        ),
    )?;
    guest.write_config(&["cdh-ttrpc", "kbs"], Some(&cdh_toml))?;
    Ok(guest)
}

/// The decoded measurements as (image, digest), checking domain and operation.
fn measured(guest: &GuestStack) -> anyhow::Result<Vec<(String, String)>> {
    guest
        .measurements()
        .into_iter()
        .map(|m| {
            if m.domain != "github.com/confidential-containers" || m.operation != "PullImage" {
                bail!(
                    "a measurement with domain {} and operation {}",
                    m.domain,
                    m.operation
                );
            }
            Ok((m.image, m.digest))
        })
        .collect()
}

/// Fails unless `result` is an `INTERNAL` pull error whose message has every one of
/// `want`; returns the message.
fn expect_pull_error(
    what: &str,
    result: Result<String, CallFailure>,
    want: &[&str],
) -> anyhow::Result<String> {
    let (code, message) = match result {
        Ok(d) => bail!("{what}: the pull succeeded ({d})"),
        Err(CallFailure::Status { code, message }) => (code, message),
        Err(CallFailure::Other(e)) => bail!("{what}: no ttrpc status: {e}"),
    };
    if code != 13 || !message.starts_with("[CDH] [ERROR]: Image Pull error") {
        bail!("{what}: expected INTERNAL with CDH's prefix, got code {code}: {message}");
    }
    for w in want {
        if !message.contains(w) {
            bail!("{what}: the error does not say {w:?}: {message}");
        }
    }
    eprintln!("[guest_ttrpc] {what}: {message}");
    Ok(message)
}

#[test]
fn veil_guest_serves_kata_agents_pulls_forwards_the_rest_and_cleans_up() {
    let kek_cdh = random_bytes(32, 0x6364_6821);
    let kek_kbs = random_bytes(32, 0x6b62_7321);
    let mut guest = stack(&kek_cdh, &kek_kbs).unwrap();
    let mut run = || -> anyhow::Result<()> {
        let plain = guest.push("plain", &layers(LayerFormat::PlainGzip, 1)?)?;
        let via_cdh = guest.push("kid-cdh", &kid_image(KID_CDH, &kek_cdh, 2)?)?;
        let via_kbs = guest.push("kid-kbs", &kid_image(KID_KBS, &kek_kbs, 3)?)?;
        let nobody = guest.push(
            "kid-nobody",
            &kid_image(KID_NOBODY, &random_bytes(32, 9), 4)?,
        )?;
        guest.start()?;
        // The credentials the cdh.toml names were fetched through the CDH at start-up.
        let calls = guest.cdh.as_ref().map(|c| c.calls()).unwrap_or_default();
        if !calls.iter().any(|c| {
            c.service == GET_RESOURCE_SERVICE
                && String::from_utf8_lossy(&c.payload).contains(CREDENTIALS_URI)
        }) {
            bail!("veil-guest did not fetch {CREDENTIALS_URI} through the CDH: {calls:?}");
        }

        // 1. Three pulls at once on kata-agent's one connection.
        let client = guest.client()?;
        let pulls = [
            ("plain", &plain),
            ("kid-cdh", &via_cdh),
            ("kid-kbs", &via_kbs),
        ];
        let bundles: Vec<PathBuf> = pulls
            .iter()
            .map(|(name, _)| guest.bundle(name))
            .collect::<anyhow::Result<_>>()?;
        let t = Instant::now();
        let answers =
            guest
                .runtime
                .block_on(futures::future::join_all(pulls.iter().zip(&bundles).map(
                    |((_, (image, _)), bundle)| {
                        let client = client.clone();
                        async move { client.pull_image(image, bundle, PULL_TIMEOUT).await }
                    },
                )));
        eprintln!("[guest_ttrpc] three pulls at once: {:.2?}", t.elapsed());
        for (((name, (_, digest)), bundle), answer) in pulls.iter().zip(&bundles).zip(answers) {
            let got = answer.map_err(|e| anyhow::anyhow!("PullImage {name}: {e:?}"))?;
            if &got != digest {
                bail!("PullImage {name} answered {got}, the pushed manifest is {digest}");
            }
            let out = runc_run_script(&guest.dir, bundle, name, &script())?;
            if out != expected_output() {
                bail!("{name}: the container printed {out:?}");
            }
        }
        let calls = guest.cdh.as_ref().map(|c| c.calls()).unwrap_or_default();
        if !calls.iter().any(|c| {
            c.service == GET_RESOURCE_SERVICE
                && c.method == "GetResource"
                && String::from_utf8_lossy(&c.payload).contains(KID_CDH)
        }) {
            bail!("the KEK of {KID_CDH} was not asked of the CDH: {calls:?}");
        }
        let metrics = guest.kbs.metrics()?;
        if count(&metrics, &resource_reads(RESOURCE_KBS)) != 1
            || count(&metrics, SAMPLE_ATTESTATIONS) < 1
        {
            bail!("the KBS did not release {RESOURCE_KBS} once after attestation: {metrics:?}");
        }
        let mut measured = measured(&guest)?;
        measured.sort();
        let mut want: Vec<(String, String)> = pulls
            .iter()
            .map(|(_, (i, d))| (i.clone(), d.clone()))
            .collect();
        want.sort();
        if measured != want {
            bail!("runtime measurements {measured:?}, expected one per pull {want:?}");
        }

        // 2. Forwarding, on the same connection.
        let ping = b"unknown service through veil".to_vec();
        let echoed = guest
            .runtime
            .block_on(client.call(ECHO_SERVICE, ECHO_METHOD, ping.clone(), CALL_TIMEOUT))
            .map_err(|e| anyhow::anyhow!("echo through veil: {e:?}"))?;
        let kek = guest
            .runtime
            .block_on(client.get_resource(KID_CDH, CALL_TIMEOUT))
            .map_err(|e| anyhow::anyhow!("GetResource through veil: {e:?}"))?;
        if echoed != ping || kek != kek_cdh {
            bail!("forwarded calls came back changed");
        }
        let calls = guest.cdh.as_ref().map(|c| c.calls()).unwrap_or_default();
        if !calls
            .iter()
            .any(|c| c.service == ECHO_SERVICE && c.payload == ping)
        {
            bail!("the unknown-service call did not reach the CDH: {calls:?}");
        }

        // 3. kata-agent's teardown.
        for bundle in &bundles {
            unmount_rootfs(bundle)?;
        }
        guest.wait_nothing_mounted("unmounting every rootfs")?;

        // 4. Bad input.
        let measured_before = guest.measurements().len();
        let b = guest.bundle("bad")?;
        let r = guest.runtime.block_on(client.pull_image(
            &guest.image("nothing-here"),
            &b,
            PULL_TIMEOUT,
        ));
        expect_pull_error("unknown image", r, &["no such image", "nothing-here"])?;
        let r =
            guest
                .runtime
                .block_on(client.pull_image(&guest.image("refused"), &b, PULL_TIMEOUT));
        expect_pull_error(
            "policy reject",
            r,
            &["rejects it", "refused", "policy.json"],
        )?;
        let r = guest
            .runtime
            .block_on(client.pull_image(&nobody.0, &b, PULL_TIMEOUT));
        expect_pull_error("missing key", r, &[KID_NOBODY, "cdh-ttrpc", "kbs"])?;
        if !guest.mounts().is_empty() || guest.measurements().len() != measured_before {
            bail!(
                "failed pulls left mounts {:?} or measurements {:?}",
                guest.mounts(),
                guest.measurements()
            );
        }

        // 5. SIGTERM with a container running, then a restart.
        let kept = guest.bundle("kept")?;
        guest
            .runtime
            .block_on(client.pull_image(&plain.0, &kept, PULL_TIMEOUT))
            .map_err(|e| anyhow::anyhow!("pull into kept: {e:?}"))?;
        drop(client);
        let status = guest
            .veil()?
            .stop_with(libc::SIGTERM, Duration::from_secs(20));
        if !status.is_some_and(|s| s.success()) {
            bail!("veil-guest did not exit cleanly on SIGTERM: {status:?}");
        }
        guest.veil = None;
        if guest.socket.exists() {
            bail!(
                "the socket {} is left after SIGTERM",
                guest.socket.display()
            );
        }
        let rootfs = kept.join("rootfs").to_string_lossy().into_owned();
        if !guest.mounts().contains(&rootfs) {
            bail!(
                "SIGTERM took down a running container's root: {:?}",
                guest.mounts()
            );
        }
        guest.start()?;
        if !guest.veil()?.output().contains("still mounted") {
            bail!("the restarted veil-guest did not adopt the mounted root");
        }
        unmount_rootfs(&kept)?;
        guest.wait_nothing_mounted("unmounting the adopted root")?;

        // A measurement that fails fails the pull, and the mounted root is taken down:
        // an "attestation agent" that hangs up on every call.
        if let Some(aa) = guest.aa.take() {
            guest.runtime.block_on(aa.stop());
        }
        let hangup = std::os::unix::net::UnixListener::bind(&guest.aa_socket)?;
        let hangups = std::thread::spawn(move || {
            // Until the test drops its end (one connection per pull is enough here).
            if let Ok((conn, _)) = hangup.accept() {
                drop(conn);
            }
        });
        let client = guest.client()?;
        let b = guest.bundle("unmeasured")?;
        let r = guest
            .runtime
            .block_on(client.pull_image(&plain.0, &b, PULL_TIMEOUT));
        expect_pull_error(
            "measurement failed",
            r,
            &["runtime measurements", &guest.aa_socket.to_string_lossy()],
        )?;
        guest.wait_nothing_mounted("a pull whose measurement failed")?;
        if b.join("config.json").exists() {
            bail!("a pull whose measurement failed left its config.json");
        }
        let _ = hangups.join();
        drop(client);

        // 6. The CDH goes down.
        if let Some(cdh) = guest.cdh.take() {
            guest.runtime.block_on(cdh.stop());
        }
        let client = guest.client()?;
        match guest
            .runtime
            .block_on(client.get_resource(KID_CDH, CALL_TIMEOUT))
        {
            Err(CallFailure::Status { code: 14, message })
                if message.contains(&*guest.upstream.to_string_lossy()) =>
            {
                eprintln!("[guest_ttrpc] CDH down: {message}")
            }
            other => bail!("GetResource with the CDH down: {other:?}"),
        }
        drop(client);
        let status = guest
            .veil()?
            .stop_with(libc::SIGTERM, Duration::from_secs(20));
        if !status.is_some_and(|s| s.success()) {
            bail!("veil-guest did not exit cleanly: {status:?}");
        }
        guest.veil = None;
        // Its cdh.toml names a kbs:// resource: without the CDH it cannot start.
        let mut cmd = Command::new(veil_binary("veil-guest"));
        cmd.arg("--config").arg(&guest.config);
        let out = run_with_timeout(cmd, START_TIMEOUT, &guest.dir.join("veil-guest-no-cdh"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success()
            || !stderr.contains(CREDENTIALS_URI)
            || !stderr.contains(&*guest.upstream.to_string_lossy())
        {
            bail!("start-up without the CDH: {} {stderr}", out.status);
        }
        if guest.socket.exists() || !guest.mounts().is_empty() {
            bail!("a failed start-up left its socket or mounts");
        }
        Ok(())
    };
    let result = run();
    if let Err(e) = &result {
        eprintln!("{}", guest.logs());
        panic!("{e:#}");
    }
}

/// The memory test's plaintext cache budget (`[cache] memory_bytes`).
const SMALL_BUDGET: u64 = 16 << 20;
/// Its big file: 4 times the budget.
const LARGE_FILE: usize = 64 << 20;
/// The cgroup's limit above the budget: veil-guest is killed if it needs more.
const CGROUP_HEADROOM: u64 = 176 << 20;
/// What veil-guest's peak RSS may exceed the budget by. Measured (debug build, this
/// test, four runs): 21 MiB at start, peak 116–134 MiB with the 16 MiB budget after both
/// images' 64 MiB files were read, i.e. up to 118 MiB over it: code and heap, the runtime's and FUSE's
/// threads, and the range buffers of lazy reads (up to `veil_fusefs::pipeline::
/// DEFAULT_MAX_REQUEST`, 16 MiB, per request in flight), which glibc keeps once freed.
const RSS_OVERHEAD: u64 = 144 << 20;

/// veil-guest's metrics around reading [`BIG_PATH`] of image `name` (`pulled`: scraped
/// after its pull, `read`: after the read): its layers are mounted (streamed for the
/// tar.gz image, lazy for the eStargz one); for the eStargz image, on-demand bytes and
/// FUSE reads grew by at least the file's size.
fn check_guest_metrics(name: &str, pulled: &str, read: &str) -> anyhow::Result<()> {
    let mode = if name == "large-plain" {
        "streamed"
    } else {
        "lazy"
    };
    let mounted = sum(
        pulled,
        "veil_mounted_layers",
        &[("mode", mode), ("state", "serving")],
    );
    if mounted < 2.0 {
        bail!("{name}: veil-guest's metrics count {mounted} {mode} layers mounted after its pull, expected its 2");
    }
    let on_demand = [("source", "on_demand")];
    let fetched = sum(read, "veil_layer_fetched_bytes_total", &on_demand)
        - sum(pulled, "veil_layer_fetched_bytes_total", &on_demand);
    let reads = sum(read, "veil_fuse_operations_total", &[("op", "read")])
        - sum(pulled, "veil_fuse_operations_total", &[("op", "read")]);
    eprintln!("[guest_ttrpc] {name}: metrics: {mounted} {mode} layers mounted; the read fetched {fetched} bytes on demand in {reads} FUSE reads");
    if reads < 1.0 {
        bail!("{name}: veil-guest's metrics count no FUSE read while {BIG_PATH} was read");
    }
    if mode == "lazy" && fetched < LARGE_FILE as f64 {
        bail!("{name}: veil-guest's metrics count {fetched} bytes fetched on demand while a {LARGE_FILE}-byte random file was read");
    }
    Ok(())
}

#[test]
fn a_large_image_starts_within_a_small_memory_budget() {
    let guest = GuestStack::new("veil-guest-memory-", HashMap::new()).unwrap();
    let cgroup = veil_tests::memory_cgroup::MemoryCgroup::create(
        &format!("veil-guest-test-{}", std::process::id()),
        SMALL_BUDGET + CGROUP_HEADROOM,
    )
    .unwrap();
    let mut guest = guest;
    let mut run = || -> anyhow::Result<()> {
        let big = random_bytes(LARGE_FILE, 0x6d65_6d21);
        let want = format!("{}  {BIG_PATH}\n", sha256_hex(&big));
        let images = [
            (
                "large-plain",
                guest.push("large-plain", &sized_layers(LayerFormat::PlainGzip, &big)?)?,
            ),
            (
                "large-estargz",
                guest.push("large-estargz", &sized_layers(LayerFormat::Estargz, &big)?)?,
            ),
        ];
        let metrics = free_loopback_address()?;
        guest.write_config_with(
            &[],
            None,
            &format!(
                "[cache]\nmemory_bytes = {SMALL_BUDGET}\n\n[metrics]\naddress = \"{metrics}\"\n"
            ),
        )?;
        guest.start()?;
        let pid = guest.veil()?.pid();
        cgroup.add(pid)?;
        eprintln!(
            "[guest_ttrpc] veil-guest started: RSS {:?}",
            veil_tests::memory_cgroup::rss(pid)?
        );
        let client = guest.client()?;
        for (name, (image, digest)) in &images {
            let bundle = guest.bundle(name)?;
            let got = guest
                .runtime
                .block_on(client.pull_image(image, &bundle, PULL_TIMEOUT))
                .map_err(|e| anyhow::anyhow!("PullImage {name}: {e:?}"))?;
            if &got != digest {
                bail!("{name}: answered {got}, pushed {digest}");
            }
            eprintln!(
                "[guest_ttrpc] {name} pulled: RSS {:?}",
                veil_tests::memory_cgroup::rss(pid)?
            );
            let pulled = guest.runtime.block_on(scrape(&metrics))?;
            // The whole big file, read through the layer.
            let out = runc_run_script(&guest.dir, &bundle, name, &format!("sha256sum {BIG_PATH}"))?;
            if out != want {
                bail!("{name}: sha256sum printed {out:?}, expected {want:?}");
            }
            eprintln!(
                "[guest_ttrpc] {name} read: RSS {:?}",
                veil_tests::memory_cgroup::rss(pid)?
            );
            let read = guest.runtime.block_on(scrape(&metrics))?;
            check_guest_metrics(name, &pulled, &read)?;
            unmount_rootfs(&bundle)?;
            guest.wait_nothing_mounted(name)?;
        }
        let (rss, hwm) = veil_tests::memory_cgroup::rss(pid)?;
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        eprintln!(
            "[guest_ttrpc] {} MiB file (4x the {} MiB budget), plain and eStargz: veil-guest peak RSS {:.1} MiB \
             (now {:.1} MiB), cgroup peak {:?} MiB, limit hits {:?}",
            LARGE_FILE >> 20,
            SMALL_BUDGET >> 20,
            mib(hwm),
            mib(rss),
            cgroup.peak().map(mib),
            cgroup.limit_hits()
        );
        if hwm > SMALL_BUDGET + RSS_OVERHEAD {
            bail!(
                "veil-guest's peak RSS {:.1} MiB is over the {} MiB budget + {} MiB",
                mib(hwm),
                SMALL_BUDGET >> 20,
                RSS_OVERHEAD >> 20
            );
        }
        drop(client);
        let status = guest.veil()?.stop();
        if !status.is_some_and(|s| s.success()) {
            bail!(
                "veil-guest (in a {} MiB cgroup) did not exit cleanly: {status:?}",
                (SMALL_BUDGET + CGROUP_HEADROOM) >> 20
            );
        }
        guest.veil = None;
        Ok(())
    };
    let result = run();
    if let Err(e) = &result {
        eprintln!("{}", guest.logs());
        panic!("{e:#}");
    }
}
