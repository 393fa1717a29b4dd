//! The demo's flow (`veil-demo`, `veil_tests::lazy_scenario`) as a test: registry on
//! loopback, an eStargz image pushed to it, `veil pull`, containers run lazily with `ctr
//! run --snapshotter veil`, `veil status`, veil-snapshotter restarted, a container run
//! again; then the status quo side by side (the same image pulled by containerd itself into
//! overlayfs, the same container run from it, all of it removed again); everything cleaned
//! up.
//!
//! The demo's first part (`veil_tests::attested_scenario`) as a second test: the image
//! converted with `veil convert --encrypt --kbs-kid`, its KEK released by the test KBS
//! after sample attestation, `veil pull` + `ctr run` lazily, one attestation and one
//! resource request for the whole image, the summary the demo prints.
//!
//! The guest flow (`veil_tests::guest_scenario`, `veil-demo --flow guest`) as a third:
//! veil-guest on a CDH socket, PullImage of an encrypted image whose KEK the test KBS
//! releases after attestation, runc, a fraction of the image fetched, one attestation, one
//! measurement, nothing left mounted; then, in the same run, the status quo (the image
//! pulled whole as CDH's puller does it, decrypted, unpacked into a work dir, overlaid, the
//! same command run with runc) side by side: same output, Veil fetched less than the whole
//! image, the status quo's unpacked plaintext at least the image's data.
//!
//! Needs root, containerd 1.6, runc, docker-registry, busybox-static and FUSE. Run with
//! `cargo test -p veil-tests --test demo -- --nocapture --test-threads=1`.

use std::time::Duration;

use veil_tests::attested_scenario::{self, KbsCounts, KID, RESOURCE};
use veil_tests::lazy_scenario::{self, percent, Binaries, Options};

/// The demo's tests start containerd (one at a time: they share `/run/containerd`).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn attested_demo_flow_runs_an_encrypted_image_lazily_with_one_attestation() {
    veil_tests::require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let report = attested_scenario::run(&Options::default(), &mut |step| {
        eprintln!("[demo attested] {step}\n")
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let summary = report.summary();
    eprintln!("[demo attested] summary:\n{summary}");

    // Every layer encrypted by veil convert, served lazily by veil pull.
    assert_eq!(report.layers.len(), 2);
    assert!(report.all_encrypted, "{:?}", report.layers);
    assert_eq!(
        report.lazy_layers,
        2,
        "veil pull output:\n{}",
        report.pull_lines.join("\n")
    );
    // The key came at pull time: one attestation, one resource read, already then.
    assert_eq!(
        report.kbs_after_pull.attest, 1,
        "{:?}",
        report.kbs_after_pull
    );
    assert_eq!(
        report.kbs_after_pull.kek_reads, 1,
        "{:?}",
        report.kbs_after_pull
    );

    // Small files: right output, under 10 % of the big layer; the big file exact.
    assert_eq!(
        report.small.as_deref(),
        Ok(report.small_expected.as_str()),
        "the small-file container's output"
    );
    let big = report.layers.last().unwrap();
    assert!(
        big.served_through_small * 10 < big.size,
        "reading small files cost {} of the big layer's {} bytes",
        big.served_through_small,
        big.size
    );
    assert!(report.sha_matches(), "sha256sum printed {:?}", report.sha);
    // Reading the whole large file fetched (nearly) the whole layer that holds it.
    assert!(big.served_through_sha * 10 >= big.size * 9, "{big:?}");

    // One of each KBS request for the whole image; the KEK in no log; all cleaned up.
    assert_eq!(
        report.kbs,
        KbsCounts {
            auth: 1,
            attest: 1,
            sample_attested: 1,
            resource_requests: 1,
            kek_reads: 1
        }
    );
    assert_eq!(report.key_in_logs, Ok(()));
    assert_eq!(report.cleanup, Ok(()));
    assert_eq!(report.problems(), Vec::<String>::new());

    // What the demo prints.
    for needle in [
        format!("every layer's key wrapped for kid {KID}"),
        "2 of 2 layers lazy".to_string(),
        format!("(1 read of {RESOURCE})"),
        "1 auth, 1 attestation (1 sample evidence accepted), 1 resource request".to_string(),
        "sha256sum of the 64.0 MiB file in a container: matched".to_string(),
        "The KEK in veil-snapshotter's log: nowhere.".to_string(),
        "nothing left running or mounted".to_string(),
        big.digest.clone(),
    ] {
        assert!(
            summary.contains(&needle),
            "the summary lacks {needle:?}:\n{summary}"
        );
    }
}

#[test]
fn demo_flow_starts_a_container_lazily_across_a_restart() {
    veil_tests::require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bins = Binaries::build();
    let tmp = tempfile::Builder::new()
        .prefix("veil-demo-test-")
        .tempdir()
        .expect("temp dir");
    let report = lazy_scenario::run(tmp.path(), &bins, &Options::default(), &mut |step| {
        eprintln!("[demo] {step}\n")
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // Every layer lazy; none in containerd's content store.
    assert_eq!(report.layers.len(), 2);
    assert_eq!(
        report.lazy_layers,
        2,
        "veil pull output:\n{}",
        report.pull_lines.join("\n")
    );
    assert!(
        report.layers_in_content_store.is_empty(),
        "layers downloaded into containerd: {:?}",
        report.layers_in_content_store
    );
    assert_eq!(report.plugin_status, "ok");

    // The small read: right output, under 10 % of the layers, under 10 % of the big layer.
    assert_eq!(
        report.small.output.as_deref(),
        Ok(report.small_expected.as_str()),
        "first container's output"
    );
    let total = report.layer_bytes_total();
    let served = report.served_through_small();
    assert!(
        served * 10 < total,
        "reading two small files cost {served} of {total} layer bytes ({:.2} %)",
        percent(served, total)
    );
    let (big_served, big_layer) = report.big_layer_served_through_small();
    assert!(
        big_served * 10 < big_layer,
        "reading a small file cost {big_served} of the big layer's {big_layer} bytes"
    );

    // The whole big file, exact.
    assert!(
        report.sha_matches,
        "sha256sum printed {:?}, expected {}",
        report.sha.output, report.big_sha256
    );

    // veil status counts both layers as served lazily and lists them.
    assert_eq!(
        report.status_json["remote_snapshots"], 2,
        "veil status:\n{}",
        report.status_text
    );
    let listed = report.status_json["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("veil status --json: {}", report.status_json));
    for l in &report.layers {
        assert!(
            listed
                .iter()
                .any(|s| s["digest"] == l.digest.as_str() && s["mode"] == "lazy"),
            "veil status does not list {} as lazy:\n{}",
            l.digest,
            report.status_text
        );
    }

    // The restart: clean stop, layers mounted again, the container's output unchanged.
    let r = &report.restart;
    assert_eq!(r.failure, None, "restart failed");
    assert!(
        r.exit.map(|e| e.success()).unwrap_or(false),
        "veil-snapshotter exited with {:?} on SIGTERM",
        r.exit
    );
    assert!(
        r.remount_log
            .iter()
            .any(|l| l.contains("mounted remote layers again")),
        "the restarted snapshotter did not log mounting its remote layers again: {:?}",
        r.remount_log
    );
    let again = r.run.as_ref().expect("the container ran after the restart");
    assert_eq!(
        again.output.as_deref(),
        Ok(report.small_expected.as_str()),
        "the container's output after the restart"
    );

    // The status quo: containerd's own pull downloaded every layer whole, the container on
    // overlayfs printed the same, and nothing of it is left. Both paths' times are in the
    // report; they are printed, not compared (timing belongs in benchmarks).
    let sq = &report.status_quo;
    assert_eq!(sq.failure, None, "the status-quo path failed");
    assert_eq!(sq.namespace, lazy_scenario::STATUS_QUO_NAMESPACE);
    assert_eq!(sq.pull_fetched.len(), report.layers.len());
    for (l, got) in report.layers.iter().zip(&sq.pull_fetched) {
        assert!(
            *got >= l.size,
            "ctr images pull fetched {got} of layer {}'s {} bytes",
            l.digest,
            l.size
        );
    }
    assert!(percent(sq.pull_fetched_total(), total) >= 100.0);
    assert_eq!(
        sq.content_disk, total,
        "layer blobs in containerd's content store"
    );
    assert!(
        sq.snapshots >= report.layers.len(),
        "{} overlayfs snapshots after the pull",
        sq.snapshots
    );
    let ctr_small = sq.small.as_ref().expect("the container ran on overlayfs");
    assert_eq!(
        ctr_small.output.as_deref(),
        Ok(report.small_expected.as_str()),
        "the container's output on overlayfs"
    );
    assert_eq!(ctr_small.fetched_total(), 0, "overlayfs run fetched bytes");
    assert!(
        sq.left_after_cleanup.is_empty(),
        "left after removing the status quo: {:?}",
        sq.left_after_cleanup
    );
    assert!(report.pull_time > Duration::ZERO && sq.pull_time > Duration::ZERO);
    let ctr_cold = sq.cold_start().expect("the status quo's cold start");
    assert!(ctr_cold >= sq.pull_time);
    assert!(report.veil_cold_start() >= report.pull_time);
    eprintln!(
        "[demo] pull: veil {:.2?}, ctr {:.2?}; cold start: veil {:.2?}, ctr {:.2?}; layer bytes \
         served: veil {} ({:.2} %), ctr {} ({:.2} %)",
        report.pull_time,
        sq.pull_time,
        report.veil_cold_start(),
        ctr_cold,
        report.served_through_small(),
        percent(report.served_through_small(), total),
        sq.served_through_small(),
        percent(sq.served_through_small(), total)
    );

    // Clean-up.
    assert!(
        report
            .cleanup
            .veil_final_exit
            .map(|e| e.success())
            .unwrap_or(false),
        "final veil-snapshotter exit: {:?}",
        report.cleanup.veil_final_exit
    );
    assert!(
        report.cleanup.shutdown.shims_left.is_empty(),
        "{:?}",
        report.cleanup.shutdown
    );
    assert!(
        report.cleanup.still_alive.is_empty(),
        "still alive: {:?}",
        report.cleanup.still_alive
    );
    assert!(
        report.cleanup.mounts_left.is_empty(),
        "still mounted: {:?}",
        report.cleanup.mounts_left
    );
    assert_eq!(report.problems(), Vec::<String>::new());
    eprintln!(
        "[demo] steps: {}",
        report
            .steps
            .iter()
            .chain(&report.status_quo.steps)
            .map(|s| format!("{} {:.2?} {} B", s.step, s.time, s.layer_bytes))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[test]
fn guest_demo_flow_pulls_an_encrypted_image_inside_a_guest_lazily() {
    veil_tests::require_root();
    const BIG: usize = 16 << 20;
    let report =
        veil_tests::guest_scenario::run(BIG, &mut |step| eprintln!("[demo guest] {step}\n"))
            .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("[demo guest] summary:\n{}", report.summary());
    assert_eq!(report.answered_digest, report.pushed_digest);
    assert_eq!(report.output, report.expected_output);
    assert!(report.first_output <= report.exited);
    // The container read two small files: a small part of the big layer was fetched.
    let big = report.layers.last().unwrap();
    assert!(big.served * 10 < big.size, "{big:?}");
    assert_eq!(
        (report.kbs_attest, report.kbs_kek_reads),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(
        report.measurements,
        [(report.image.clone(), report.answered_digest.clone())]
    );
    assert!(report.left_mounted.is_empty(), "{:?}", report.left_mounted);

    // The status quo in the same run: CDH's puller (fetch whole, decrypt, unpack, overlay).
    let sq = report
        .status_quo
        .as_ref()
        .unwrap_or_else(|e| panic!("the status quo's whole pull: {e}"));
    // Both containers print the same.
    assert_eq!(sq.output, report.output);
    // Veil fetched fewer bytes than the whole image; the status quo all of it.
    assert!(report.served() < report.image_bytes(), "{report:?}");
    assert!(sq.served() >= report.image_bytes(), "{sq:?}");
    // The status quo's unpacked plaintext holds at least the image's data (the big random
    // file alone), and its work dir at least that; Veil's work dir holds less.
    assert!(sq.unpacked() >= BIG as u64, "{sq:?}");
    assert!(sq.work_dir_bytes >= sq.unpacked(), "{sq:?}");
    assert!(report.work_dir_bytes < sq.work_dir_bytes, "{report:?}");
    assert!(sq.first_output <= sq.exited);
    assert!(sq.left_mounted.is_empty(), "{:?}", sq.left_mounted);
    assert!(report.summary().contains("CDH's puller (status quo)"));
}
